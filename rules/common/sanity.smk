# Helpers of rules/sanity.smk (functions and settings; Snakemake's linter keeps them apart from rules).
from vislib.methods import METHODS
from vislib.metrics import METRICS


def sanity_settings(experiment):
    """The experiment's `sanity:` block (None when it has none)."""
    return config["experiments"][experiment].get("sanity")


def sanity_method(label):
    """(registry name, params) of a method in a sanity block: a label under `methods:` or a registry name."""
    if label in config["methods"]:
        return method_spec(config, label)
    return label, {}


def sanity_tables(experiment, path=Paths.sanity_table):
    """Every sanity job's output of the experiment (`path`: its table, or with Paths.sanity_maps its maps)."""
    exp, block = config["experiments"][experiment], sanity_settings(experiment)
    return [path(experiment, exp["dataset"], model, layer, method)
            for model, layers in exp["models"].items() for layer in layers for method in block["methods"]]


def has_curves(experiment):
    """Whether a metric of the experiment keeps per-image curves (deletion, insertion)."""
    names = [metric_spec(config, label)[0] for label in config["experiments"][experiment]["metrics"]]
    return any(METRICS[name].curve_column for name in names)


def evaluation_figures(experiment):
    """The metric bar chart and the paired-comparison matrices of an experiment, its deletion/insertion curves
    where it has those metrics, and its sanity-check curves where it has a `sanity:` block."""
    return [Paths.figure(experiment, "metrics.png"), Paths.figure(experiment, "comparisons.png")] + (
        [Paths.figure(experiment, "perturbation_curves.png")] if has_curves(experiment) else []) + (
        [Paths.figure(experiment, "sanity.png"), Paths.figure(experiment, "sanity_maps.png")]
        if sanity_settings(experiment) else [])


for _experiment in config["experiments"]:
    for _label in (sanity_settings(_experiment) or {}).get("methods", []):
        if sanity_method(_label)[0] not in METHODS.names():
            raise WorkflowError(f"experiments.{_experiment}.sanity.methods: unknown method {_label!r}; "
                                f"known: {sorted(set(config['methods']) | set(METHODS.names()))}")
