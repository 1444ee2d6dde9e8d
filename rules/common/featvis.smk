# Helpers of rules/featvis.smk (functions and settings; Snakemake's linter keeps them apart from rules).
from vislib.config import featvis_jobs, featvis_spec
from vislib.featvis import get as featvis_method
from vislib.featvis.units import job_settings as featvis_job_settings, shard_count as featvis_shard_count, unit_source


def featvis_settings(experiment, label):
    """The experiment's featvis settings one method's jobs depend on."""
    return featvis_job_settings(featvis_spec(config, label)[0], config["experiments"][experiment]["featvis"])


def featvis_shards(wildcards):
    """Every shard of one experiment/model/layer/method; image-started methods count the checkpointed image list."""
    name, params = featvis_spec(config, wildcards.method)
    n_images = 0
    if unit_source(name) in ("images", "clusters"):
        n_images = listed_images(experiment_dataset(wildcards.experiment))
    count = featvis_shard_count(featvis_method(name, **params), featvis_settings(wildcards.experiment, wildcards.method),
                                n_images)
    return [Paths.featvis_shard(wildcards.experiment, wildcards.model, wildcards.layer, wildcards.method, shard)
            for shard in range(count)]


def featvis_draws_scatter(label):
    """Whether featvis method `label` keeps what the cluster scatter needs (class_agnostic with `scatter: true`)."""
    name, params = featvis_spec(config, label)
    return unit_source(name) == "clusters" and featvis_method(name, **params).params["scatter"]


def featvis_grids(experiment):
    """Every featvis figure of the experiment: a grid per model/layer/method, and the cluster scatters asked for."""
    out = []
    for job in featvis_jobs(config, experiment):
        out.append(Paths.featvis_grid(job.experiment, job.model, job.layer, job.method))
        if featvis_draws_scatter(job.method):
            out.append(Paths.featvis_scatter(job.experiment, job.model, job.layer, job.method))
    return out
