# Config validation, path helpers and input functions shared by every rule.
import math

from snakemake.utils import validate

from vislib.config import check_config, experiment_jobs, metric_spec, method_spec, model_weights
from vislib.errors import VislibError
from vislib.methods import METHODS


validate(config, "../config/schema.yaml")
try:
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


def n_shards(dataset):
    """Shard count of a dataset, read from its checkpointed image list."""
    with open(checkpoints.image_list.get(dataset=dataset).output[0]) as handle:
        n_images = sum(1 for line in handle if line.strip())
    return max(1, math.ceil(n_images / config["shard_size"]))


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
import os

from vislib.models.torchvision_models import cached_weights, weights_cache_dir, weights_url

WEIGHTS_CACHE = str(weights_cache_dir())


def pretrained_weights():
    """{file name: url} of the configured torchvision weights that no local cache holds yet."""
    urls = [weights_url(s["arch"], s.get("weights")) for s in config["models"].values() if "train" not in s]
    return {os.path.basename(u): u for u in urls if u and cached_weights(u) is None}
