# What rules hand to jobs (model and dataset specs) and the input functions that read the checkpointed image lists.
from vislib.config import experiment_jobs, metric_spec, method_spec, model_weights
from vislib.models import ModelSpec


def weights_input(model):
    """The files a model is built from: a trained model's checkpoint, a user's checkpoint, factory file or
    TorchScript file (nothing for pretrained or random weights of a named architecture)."""
    entry = config["models"][model]
    if "train" in entry:
        return [Paths.checkpoint(model)]
    return ModelSpec.from_config(entry).files()


def model_spec(model):
    """What determines a model: its config entry, with the weights resolved (a trained model's checkpoint)."""
    spec = {key: value for key, value in config["models"][model].items() if key != "train"}
    return {**spec, "weights": model_weights(config, model, Paths.checkpoint(model))}


def dataset_spec(dataset, experiment=None):
    """The fields of the `vislib.data.DatasetRef` a job opens the dataset's configured split with; an experiment's
    jobs read its images by the experiment's resize protocol."""
    spec = config["datasets"][dataset]
    resize = config["experiments"][experiment].get("resize", "stretch") if experiment else "stretch"
    return {"kind": spec["kind"], "name": dataset, "root": Paths.dataset_root(dataset),
            "split": spec.get("split", "val"), "resize": resize}


def experiment_dataset(experiment):
    return config["experiments"][experiment]["dataset"]


def experiment_target(experiment):
    """Which class an experiment explains: the image label or the predicted class."""
    return config["experiments"][experiment].get("target", "label")


def experiment_top_k(experiment):
    """How many of the model's top classes an experiment's heatmap shards record (top-k localization)."""
    return config["experiments"][experiment].get("top_k", 1)


def listed_images(dataset):
    """Number of images in a dataset's checkpointed image list."""
    with open(checkpoints.image_list.get(dataset=dataset).output[0]) as handle:
        return sum(1 for line in handle if line.strip())


def n_shards(dataset):
    """Shard count of a dataset, read from its checkpointed image list."""
    return max(1, math.ceil(listed_images(dataset) / config["shard_size"]))


def shard_minutes(wildcards):
    """Minutes asked for one explain or evaluate job: an hour per 250 images of a shard."""
    return 60 * math.ceil(config["shard_size"] / 250)


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


def all_outputs():
    """Every final output of the configured experiments (the `all` target)."""
    out = []
    for experiment in config["experiments"]:
        out += [Paths.summary(experiment, n)
                for n in ("metrics.parquet", "summary.parquet", "comparisons.parquet", "summary.md")]
        out += experiment_grids(experiment)
        out += featvis_grids(experiment)
        out += lavise_outputs(experiment)
        out += evaluation_figures(experiment)
    out += [Paths.training(m) for m, spec in config["models"].items() if "train" in spec]
    return out
