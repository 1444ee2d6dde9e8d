# Every output path of the workflow, built in one place, and the log, benchmark and resource helpers of the rules.


class Paths:
    """Every output path of the workflow."""

    @staticmethod
    def dataset_root(dataset):
        return f"{DATA}/{dataset}"

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
    def training_curve(model):
        return f"results/models/{model}/training_curve.png"

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
        """metrics.parquet, summary.parquet, comparisons.parquet or summary.md of an experiment."""
        return f"results/{experiment}/{name}"

    @staticmethod
    def figure(experiment, name):
        """An experiment-level figure: metrics.png, comparisons.png or sanity.png."""
        return f"results/{experiment}/figures/{name}"

    @staticmethod
    def sanity_table(experiment, dataset, model, layer, method):
        return f"results/{experiment}/sanity/{dataset}/{model}/{layer}/{method}.parquet"

    @staticmethod
    def sanity_maps(experiment, dataset, model, layer, method):
        """One image's maps along the cascade (for the strip figure)."""
        return f"results/{experiment}/sanity/{dataset}/{model}/{layer}/{method}_maps.npz"

    @staticmethod
    def featvis_shard(experiment, model, layer, method, shard):
        return f"results/{experiment}/featvis/{model}/{layer}/{method}/shard_{shard}.npz"

    @staticmethod
    def featvis_grid(experiment, model, layer, method):
        return f"results/{experiment}/featvis/{model}/{layer}/{method}/grid.png"

    @staticmethod
    def featvis_scatter(experiment, model, layer, method):
        """A class-agnostic method's image-set embedding with its clusters (with `scatter: true`)."""
        return f"results/{experiment}/featvis/{model}/{layer}/{method}/scatter.png"

    @staticmethod
    def seeded_embeddings(dataset):
        return f"results/embeddings/{dataset}.txt"

    @staticmethod
    def lavise_experiment(experiment, name):
        """A LaViSE output shared by an experiment's models: vg_concepts.json (`concepts: first_token`)."""
        return f"results/{experiment}/lavise/{name}"

    @staticmethod
    def lavise(experiment, model, layer, name):
        """A LaViSE output of one model/layer: features/, explainer.pt, training.csv, recall.*, words.parquet."""
        return f"results/{experiment}/lavise/{model}/{layer}/{name}"

    @staticmethod
    def lavise_group(experiment, model, layer, group, name):
        """An output of one filter group: analysis.npz, words.parquet, filters.png."""
        return f"results/{experiment}/lavise/{model}/{layer}/group_{group}/{name}"

    @staticmethod
    def log(rule_name, job):
        """The log file of one job of `rule_name`; `job` is its wildcard pattern, e.g. "{experiment}/{model}"."""
        return f"logs/{rule_name}/{job}.log"

    @staticmethod
    def benchmark(rule_name, job):
        """The benchmark file (Snakemake's per-job time and memory record) of one job of `rule_name`."""
        return f"benchmarks/runs/{rule_name}/{job}.tsv"


# Job wildcard patterns, for logs and benchmarks.
SHARD_JOB = "{experiment}/{dataset}/{model}/{layer}/{method}/shard_{shard}"
FEATVIS_JOB = "{experiment}/{model}/{layer}/{method}"
FEATVIS_SHARD_JOB = "{experiment}/{model}/{layer}/{method}/shard_{shard}"
LAVISE_JOB = "{experiment}/{model}/{layer}"
LAVISE_GROUP_JOB = "{experiment}/{model}/{layer}/group_{group}"


def scaled(amount):
    """A resource that grows with the attempt, so a retried job asks for more: `amount` (a number, or a function
    of the wildcards) on the first attempt, twice that on the second, and so on."""
    if callable(amount):
        return lambda wildcards, attempt: amount(wildcards) * attempt
    return lambda wildcards, attempt: amount * attempt
