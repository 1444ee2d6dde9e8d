# Config validation, path helpers and input functions shared by every rule.
import math
import os

import yaml
from snakemake.utils import validate

from vislib.config import check_config, check_keys, experiment_jobs, metric_spec, method_spec, model_weights
from vislib.errors import VislibError
from vislib.methods import METHODS


try:
    # Unknown keys first: the schema's own message for one names no valid alternative.
    with open(os.path.join(workflow.basedir, "config", "schema.yaml")) as _schema:
        check_keys(config, yaml.safe_load(_schema))
    validate(config, "../config/schema.yaml")
    check_config(config)
except VislibError as exc:
    raise WorkflowError(f"invalid config: {exc}")


wildcard_constraints:
    experiment=r"[^/]+",
    dataset=r"[^/]+",
    model=r"[^/]+",
    layer=r"[^/]+",
    method=r"[^/]+",
    shard=r"\d+",
    group=r"\d+",


GPU = 0 if config["device"] == "cpu" else 1
DATA = config["data_root"]


class Paths:
    """Every output path of the workflow, built in one place."""

    @staticmethod
    def prepared(dataset):
        return f"{DATA}/{dataset}/prepared.json"

    @staticmethod
    def image_list(dataset):
        return f"results/image_lists/{dataset}.txt"

    @staticmethod
    def checkpoint(model):
        return f"results/models/{model}/model.pt"

    @staticmethod
    def training(model):
        return f"results/models/{model}/training.json"

    @staticmethod
    def heatmaps(experiment, dataset, model, layer, method, shard):
        return f"results/{experiment}/heatmaps/{dataset}/{model}/{layer}/{method}/shard_{shard}.npz"

    @staticmethod
    def metric_shard(experiment, dataset, model, layer, method, shard):
        return f"results/{experiment}/metrics/{dataset}/{model}/{layer}/{method}/shard_{shard}.parquet"

    @staticmethod
    def grid(experiment, dataset, model, layer):
        return f"results/{experiment}/figures/{dataset}/{model}/{layer}/grid.png"

    @staticmethod
    def summary(experiment, name):
        return f"results/{experiment}/{name}"

    @staticmethod
    def featvis_shard(experiment, model, layer, method, shard):
        return f"results/{experiment}/featvis/{model}/{layer}/{method}/shard_{shard}.npz"

    @staticmethod
    def featvis_grid(experiment, model, layer, method):
        return f"results/{experiment}/featvis/{model}/{layer}/{method}/grid.png"

    @staticmethod
    def seeded_embeddings(dataset):
        return f"results/embeddings/{dataset}.txt"

    @staticmethod
    def lavise(experiment, model, layer, name):
        """A LaViSE output of one model/layer: features/, explainer.pt, training.csv, recall.*, words.parquet."""
        return f"results/{experiment}/lavise/{model}/{layer}/{name}"

    @staticmethod
    def lavise_group(experiment, model, layer, group, name):
        """An output of one filter group: analysis.npz, words.parquet, filters.png."""
        return f"results/{experiment}/lavise/{model}/{layer}/group_{group}/{name}"


def weights_input(model):
    """The checkpoint file a trained model needs (nothing for pretrained or random weights)."""
    return [Paths.checkpoint(model)] if "train" in config["models"][model] else []


def model_spec(model):
    """What determines a model's weights: the config entry, resolved to a weights string."""
    spec = dict(config["models"][model])
    return {"arch": spec["arch"], "weights": model_weights(config, model, Paths.checkpoint(model)),
            "num_classes": spec.get("num_classes")}


def dataset_spec(dataset):
    spec = config["datasets"][dataset]
    return {"kind": spec["kind"], "root": f"{DATA}/{dataset}", "split": spec.get("split", "val"),
            "limit": spec.get("limit")}


def listed_images(dataset):
    """Number of images in a dataset's checkpointed image list."""
    with open(checkpoints.image_list.get(dataset=dataset).output[0]) as handle:
        return sum(1 for line in handle if line.strip())


def n_shards(dataset):
    """Shard count of a dataset, read from its checkpointed image list."""
    return max(1, math.ceil(listed_images(dataset) / config["shard_size"]))


def shard_runtime(attempt):
    """Minutes asked for one explain or evaluate job: an hour per 250 images of a shard, times the attempt."""
    return 60 * math.ceil(config["shard_size"] / 250) * attempt


def experiment_metric_shards(wildcards):
    out = []
    for job in experiment_jobs(config, wildcards.experiment):
        for shard in range(n_shards(job.dataset)):
            out.append(Paths.metric_shard(job.experiment, job.dataset, job.model, job.layer, job.method, shard))
    return out


def grid_heatmaps(wildcards):
    """The first heatmap shard of every method of the experiment for one dataset/model/layer."""
    checkpoints.image_list.get(dataset=wildcards.dataset)
    exp = config["experiments"][wildcards.experiment]
    return [Paths.heatmaps(wildcards.experiment, wildcards.dataset, wildcards.model, wildcards.layer, m, 0)
            for m in exp["methods"]]


def experiment_grids(experiment):
    exp = config["experiments"][experiment]
    return [Paths.grid(experiment, exp["dataset"], model, layer)
            for model, layers in exp["models"].items() for layer in layers]


def all_outputs():
    out = []
    for experiment in config["experiments"]:
        out += [Paths.summary(experiment, n) for n in ("metrics.parquet", "summary.parquet", "summary.md")]
        out += experiment_grids(experiment)
        out += featvis_grids(experiment)
        out += lavise_outputs(experiment)
    out += [Paths.training(m) for m, spec in config["models"].items() if "train" in spec]
    return out


def experiment_config(experiment):
    """The part of the config an experiment's tables depend on (hashed into their provenance)."""
    exp = config["experiments"][experiment]
    return {
        "experiment": exp,
        "dataset": config["datasets"][exp["dataset"]],
        "models": {m: config["models"][m] for m in exp["models"]},
        "methods": {m: config["methods"][m] for m in exp["methods"]},
        "metrics": {m: config["metrics"][m] for m in exp["metrics"]},
        "seed": config["seed"],
    }


# Sanity check and evaluation figures (rules in rules/sanity.smk).
def sanity_settings(experiment):
    """The experiment's `sanity:` block (None when it has none)."""
    return config["experiments"][experiment].get("sanity")


def sanity_method(label):
    """(registry name, params) of a method in a sanity block: a label under `methods:` or a registry name."""
    if label in config["methods"]:
        return method_spec(config, label)
    return label, {}


def sanity_tables(experiment):
    exp, block = config["experiments"][experiment], sanity_settings(experiment)
    return [f"results/{experiment}/sanity/{exp['dataset']}/{model}/{layer}/{method}.parquet"
            for model, layers in exp["models"].items() for layer in layers for method in block["methods"]]


def evaluation_figures():
    out = [f"results/{experiment}/figures/metrics.png" for experiment in config["experiments"]]
    out += [f"results/{experiment}/figures/sanity.png" for experiment in config["experiments"]
            if sanity_settings(experiment)]
    return out


for _experiment in config["experiments"]:
    for _label in (sanity_settings(_experiment) or {}).get("methods", []):
        if sanity_method(_label)[0] not in METHODS.names():
            raise WorkflowError(f"experiments.{_experiment}.sanity.methods: unknown method {_label!r}; "
                                f"known: {sorted(set(config['methods']) | set(METHODS.names()))}")


# Pretrained torchvision weights: the `weights` target fetches them into the cache (see rules/data.smk).
from vislib.models.torchvision_models import cached_weights, weights_cache_dir, weights_url

WEIGHTS_CACHE = str(weights_cache_dir())


def pretrained_weights():
    """{file name: url} of the configured torchvision weights that no local cache holds yet."""
    urls = [weights_url(s["arch"], s.get("weights")) for s in config["models"].values() if "train" not in s]
    return {os.path.basename(u): u for u in urls if u and cached_weights(u) is None}


# Feature visualization and LaViSE (rules in rules/featvis.smk and rules/lavise.smk).
from vislib.config import featvis_jobs, featvis_spec, lavise_jobs
from vislib.featvis import get as featvis_method
from vislib.featvis.jobs import job_settings as featvis_job_settings, shard_count as featvis_shard_count, unit_source
from vislib.lavise.jobs import (FEATURE_KEYS, INFER_KEYS, RECALL_KEYS, SEEDED, TRAIN_KEYS, filter_groups,
                                group_count, lavise_settings, subset)

LAVISE = lavise_settings(config.get("lavise"))


def experiment_dataset(experiment):
    return config["experiments"][experiment]["dataset"]


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


def featvis_grids(experiment):
    return [Paths.featvis_grid(job.experiment, job.model, job.layer, job.method)
            for job in featvis_jobs(config, experiment)]


def lavise_embeddings(experiment):
    """The word file of an experiment's LaViSE runs: the seeded table of its dataset, or the configured file."""
    if LAVISE["embeddings"] == SEEDED:
        return Paths.seeded_embeddings(experiment_dataset(experiment))
    return LAVISE["embeddings"]


def lavise_groups(wildcards, name):
    return [Paths.lavise_group(wildcards.experiment, wildcards.model, wildcards.layer, group, name)
            for group in range(group_count(LAVISE))]


def lavise_outputs(experiment):
    out = []
    for model, layer in lavise_jobs(config, experiment):
        out += [Paths.lavise(experiment, model, layer, n) for n in ("recall.parquet", "recall.md", "words.parquet")]
        out += [Paths.lavise_group(experiment, model, layer, g, "filters.png") for g in range(group_count(LAVISE))]
    return out
