"""Semantic checks of a workflow config (the JSON schema checks types) and what jobs it implies."""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from typing import Any

import torch

from vislib import featvis, methods, metrics, models
from vislib.data import DATASETS, ModelClasses, SourceClasses
from vislib.errors import ConfigError, VislibError
from vislib.featvis.engine import probe_layer
from vislib.featvis.units import CLASS_LAYER, unit_indices, unit_source
from vislib.lavise.settings import check_settings, filter_list, lavise_settings
from vislib.params import unknown_key_message
from vislib.registry import unknown_name_message


@dataclass(frozen=True)
class Job:
    """One (dataset, model, layer, method) combination of an experiment."""

    experiment: str
    dataset: str
    model: str
    layer: str
    method: str


def method_spec(config: dict, label: str) -> tuple[str, dict[str, Any]]:
    """(registry name, params) of a configured method; `method:` names the registry entry if the label differs."""
    spec = dict(config["methods"][label] or {})
    return spec.pop("method", label), spec


def metric_spec(config: dict, label: str) -> tuple[str, dict[str, Any]]:
    """(registry name, params) of a configured metric."""
    spec = dict(config["metrics"][label] or {})
    return spec.pop("metric", label), spec


def model_weights(config: dict, model: str, checkpoint_path: str) -> str:
    """Weights to load for a configured model: the trained checkpoint if it has a `train` block."""
    spec = config["models"][model]
    return checkpoint_path if "train" in spec else spec.get("weights", "random")


def experiment_jobs(config: dict, experiment: str) -> list[Job]:
    """Every (dataset, model, layer, method) the experiment runs."""
    exp = config["experiments"][experiment]
    return [Job(experiment, exp["dataset"], model, layer, method)
            for model, layers in exp["models"].items() for layer in layers for method in exp["methods"]]


@dataclass(frozen=True)
class FeatVisJob:
    """One (model, layer, featvis method) combination of an experiment; `layer` is CLASS_LAYER for class images."""

    experiment: str
    model: str
    layer: str
    method: str


def featvis_spec(config: dict, label: str) -> tuple[str, dict[str, Any]]:
    """(registry name, params) of a configured feature-visualization method."""
    spec = dict((config.get("featvis") or {})[label] or {})
    return spec.pop("method", label), spec


def featvis_jobs(config: dict, experiment: str) -> list[FeatVisJob]:
    """Every (model, layer, featvis method) the experiment runs; class images once per model."""
    block = config["experiments"][experiment].get("featvis")
    if not block:
        return []
    jobs = []
    for model, layers in block["models"].items():
        for label in block["methods"]:
            on_logits = unit_source(featvis_spec(config, label)[0]) == "classes"
            jobs += [FeatVisJob(experiment, model, layer, label) for layer in ([CLASS_LAYER] if on_logits else layers)]
    return jobs


def lavise_jobs(config: dict, experiment: str) -> list[tuple[str, str]]:
    """Every (model, layer) whose filters the experiment names with LaViSE."""
    block = config["experiments"][experiment].get("lavise")
    return [(model, layer) for model, layers in block["models"].items() for layer in layers] if block else []


def probe_entry(entry: dict[str, Any]) -> str:
    """The model the config check builds for a `models:` entry, as a cache key: pretrained names become random
    weights (the check needs no download), a user's checkpoint stays (so a file that does not fit fails now)."""
    spec = {key: value for key, value in entry.items() if key != "train"}
    weights = spec.get("weights", "random")
    if "train" in entry or not models.registry.is_checkpoint_path(weights):
        spec.pop("weights", None)
    return json.dumps(spec, sort_keys=True)


@functools.cache
def _probe_model(spec_json: str) -> torch.nn.Module:
    """The model's structure (on the meta device where it can be: shapes and layers without weights)."""
    return models.load_spec(json.loads(spec_json), device="meta")


def configured_model(config: dict, model: str) -> torch.nn.Module:
    """The network of `models.<model>` as the config check sees it (`probe_entry`), built once per entry."""
    try:
        return _probe_model(probe_entry(config["models"][model]))
    except VislibError as exc:
        raise ConfigError(f"models.{model}: {exc}") from None


@functools.cache
def _layers_of(spec_json: str) -> tuple[str, ...]:
    return tuple(models.layer_names(_probe_model(spec_json)))


@functools.cache
def _spatial_layers(spec_json: str) -> frozenset[str]:
    return frozenset(models.spatial_layer_names(_probe_model(spec_json)))


@functools.cache
def _output_shape(spec_json: str, layer: str | None) -> tuple[int, ...]:
    """Shape of `layer`'s output (the logits for None) on one image of the model's input size."""
    model = _probe_model(spec_json)
    size = models.preprocessing_of(model).input_size
    sample = models.probe_image(size, models.model_device(model))
    if layer is None:
        with torch.no_grad():
            return tuple(model(sample).shape)
    return probe_layer(model, layer, sample)[0]


def output_shape(config: dict, model: str, layer: str | None) -> tuple[int, ...]:
    """Shape of `layer`'s output of `models.<model>` (its logits for None) on one image."""
    configured_model(config, model)
    return _output_shape(probe_entry(config["models"][model]), layer)


def _known(kind: str, name: str, valid: list[str], where: str) -> None:
    if name not in valid:
        raise ConfigError(f"{where}: {unknown_name_message(kind, name, valid)}")


def _check_labels(kind: str, section: str, specs: dict[str, tuple[str, dict[str, Any]]], registry, build) -> None:
    """Each configured label names an entry of `registry` that `build(name, **params)` accepts the params of
    ({label: (name, params)})."""
    for label, (registry_name, params) in specs.items():
        _known(kind, registry_name, registry.names(), f"{section}.{label}")
        try:
            build(registry_name, **params)
        except VislibError as exc:
            raise ConfigError(f"{section}.{label}: {exc}") from None


def _checked_layers(config: dict, models_block: dict[str, list[str]], where: str) -> list[tuple[str, str]]:
    """(model, layer) of every layer an experiment block names, after checking each exists."""
    checked = []
    for model, layers in models_block.items():
        _known("model", model, list(config["models"]), f"{where}.models (configured under `models:`)")
        net = configured_model(config, model)
        valid_layers = list(_layers_of(probe_entry(config["models"][model])))
        for layer in layers:
            _known(f"layer of {net.vislib_name}", layer, valid_layers, f"{where}.models.{model}")
            checked.append((model, layer))
    return checked


def _needs_hooks(where: str, model: str, net: torch.nn.Module, what: str) -> None:
    if models.is_torchscript(net):
        raise ConfigError(f"{where}: {what} reads or changes layers of the model, and {model!r} is a TorchScript "
                          "model, whose compiled graph runs no hooks. Use methods on the input (vanilla_gradient, "
                          "integrated_gradients, smoothgrad of those) or give the Python model with `factory:`")


def check_keys(config: Any, schema: dict[str, Any], where: str = "config") -> None:
    """Reject a key the JSON schema does not define, anywhere in the config, naming the closest valid key.

    Runs before the schema validation, whose message for an unknown key lists no alternatives; objects whose
    keys are user labels (`additionalProperties` a schema) are checked one level further down.
    """
    if not isinstance(config, dict) or schema.get("type") not in ("object", None):
        return
    properties = schema.get("properties", {})
    extra = schema.get("additionalProperties", True)
    for key, value in config.items():
        path = f"{where}.{key}" if where != "config" else str(key)
        if key in properties:
            check_keys(value, properties[key], path)
        elif isinstance(extra, dict):
            check_keys(value, extra, path)
        elif extra is False:
            raise ConfigError(unknown_key_message(where if where != "config" else "the config", str(key),
                                                  list(properties)))


def check_config(config: dict) -> None:
    """Fail before any job runs if the config names an unknown model, layer, method, metric, dataset or
    featvis method, or has LaViSE settings no run can use."""
    for name, spec in config["datasets"].items():
        _known("dataset kind", spec["kind"], DATASETS.names(), f"datasets.{name}.kind")
        try:
            DATASETS[spec["kind"]].parse_params(spec["kind"], spec.get("params"))
        except VislibError as exc:
            raise ConfigError(f"datasets.{name}.params: {exc}") from None
    for name, spec in config["models"].items():
        if "train" in spec:
            if "arch" not in spec:
                raise ConfigError(f"models.{name}.train: vislib trains `arch:` models only; train your own network "
                                  "yourself and give its checkpoint as `weights:`")
            overrides = sorted({"input_size", "mean", "std", "class_names"} & set(spec))
            if overrides:
                raise ConfigError(f"models.{name}: {', '.join(overrides)} cannot be set on a model the workflow "
                                  "trains (`train:`): training uses the architecture's own preprocessing and the "
                                  "dataset's classes; drop them")
            _known("dataset", spec["train"]["dataset"], list(config["datasets"]), f"models.{name}.train.dataset")
        configured_model(config, name)
    _check_labels("method", "methods", {label: method_spec(config, label) for label in config["methods"]},
                  methods.METHODS, methods.get)
    _check_labels("metric", "metrics", {label: metric_spec(config, label) for label in config["metrics"]},
                  metrics.METRICS, metrics.get)
    for exp_name, exp in config["experiments"].items():
        where = f"experiments.{exp_name}"
        _known("dataset", exp["dataset"], list(config["datasets"]), f"{where}.dataset")
        for method in exp["methods"]:
            _known("method", method, list(config["methods"]), f"{where}.methods (configured under `methods:`)")
        for metric in exp["metrics"]:
            _known("metric", metric, list(config["metrics"]), f"{where}.metrics (configured under `metrics:`)")
        for model, layer in _checked_layers(config, exp["models"], where):
            net = configured_model(config, model)
            for method in exp["methods"]:
                name, params = method_spec(config, method)
                configured = methods.get(name, **params)
                if not configured.runs_on_torchscript():
                    _needs_hooks(where, model, net, f"method {method!r}")
                try:
                    configured.check_model(net)
                except VislibError as exc:
                    raise ConfigError(f"{where}.models.{model}: method {method!r}: {exc}") from None
                if configured.uses_layer and layer not in _spatial_layers(probe_entry(config["models"][model])):
                    raise ConfigError(
                        f"{where}.models.{model}: method {method!r} reads a spatial map of layer {layer!r}, which "
                        f"outputs shape {output_shape(config, model, layer)}; pick a layer with a spatial output "
                        f"(`vislib layers` marks them; the model's default is {net.vislib_default_layer!r})")
            if exp.get("sanity"):
                _needs_hooks(where, model, net, "the sanity check (it randomizes the model's layers)")
        _check_metric_needs(config, exp, where)
    _check_user_images(config)
    _check_featvis(config)
    _check_lavise(config)


def _check_metric_needs(config: dict, exp: dict, where: str) -> None:
    """An experiment's metrics get what they read: the model's top classes (`top_k` at least each metric's
    `needs_top_k`, at most each model's class count), and one label per registry name (the metrics table keys its
    rows by the registry name, so a second label of the same metric would silently replace the first)."""
    top_k = exp.get("top_k", 1)
    labels: dict[str, str] = {}
    for label in exp["metrics"]:
        name = metric_spec(config, label)[0]
        if name in labels:
            raise ConfigError(f"{where}.metrics: {labels[name]!r} and {label!r} are both metric {name!r}; metric rows "
                              "are keyed by the registry name, so list one of them here (the other in a second "
                              "experiment)")
        labels[name] = label
        needed = metrics.METRICS[name].needs_top_k
        if needed > top_k:
            raise ConfigError(f"{where}.metrics: {label!r} ({name}) needs the model's {needed} top classes recorded "
                              f"with the maps; add `top_k: {needed}` to {where} (its explain jobs then record "
                              f"them, and the label's map where it is among them)")
    if top_k > 1:
        for model in exp["models"]:
            classes = output_shape(config, model, None)[-1]
            if top_k > classes:
                raise ConfigError(f"{where}.top_k: {top_k} is more than the {classes} classes of model {model!r}")


def _check_units(wanted: list[int], count: int, where: str, what: str) -> None:
    bad = [u for u in wanted if not 0 <= u < count]
    if bad:
        raise ConfigError(f"{where}: {what} {bad[:5]} out of range; this has {count} {what}, use 0..{count - 1}")


def _check_featvis(config: dict) -> None:
    """Featvis labels name registered methods with valid params; experiments name labels, models and layers."""
    labels = list(config.get("featvis") or {})
    _check_labels("featvis method", "featvis", {label: featvis_spec(config, label) for label in labels},
                  featvis.FEATVIS, featvis.get)
    for exp_name, exp in config["experiments"].items():
        block = exp.get("featvis")
        if not block:
            continue
        where = f"experiments.{exp_name}.featvis"
        for label in block["methods"]:
            _known("featvis method", label, labels, f"{where}.methods (configured under `featvis:`)")
        sources = {unit_source(featvis_spec(config, label)[0]) for label in block["methods"]}
        for model, layer in _checked_layers(config, block["models"], where):
            _needs_hooks(where, model, configured_model(config, model), "feature visualization")
            if "channels" in sources and "channels" in block:
                shape = output_shape(config, model, layer)
                _check_units(unit_indices(block["channels"]), shape[1], f"{where}.channels ({model} {layer})",
                             "channels")
        if "classes" in sources and "classes" in block:
            for model in block["models"]:
                n_classes = output_shape(config, model, None)[1]
                _check_units(unit_indices(block["classes"]), n_classes, f"{where}.classes ({model})", "classes")


def _check_lavise(config: dict) -> None:
    """LaViSE settings are usable and every experiment's LaViSE layer is a known layer with the filters named."""
    blocks = {name: exp["lavise"] for name, exp in config["experiments"].items() if exp.get("lavise")}
    if not blocks and config.get("lavise") is None:
        return
    settings = lavise_settings(config.get("lavise"))
    check_settings(settings)
    for exp_name, block in blocks.items():
        where = f"experiments.{exp_name}.lavise"
        dataset = config["experiments"][exp_name]["dataset"]
        kind = config["datasets"][dataset]["kind"]
        if settings["concepts"] == "first_token" and kind != "vg":
            raise ConfigError(f"lavise.concepts: 'first_token' reads Visual Genome synsets, but experiment "
                              f"{exp_name!r} uses dataset {dataset!r} of kind {kind!r}; use 'words' for it")
        for model, layer in _checked_layers(config, block["models"], where):
            _needs_hooks(where, model, configured_model(config, model), "LaViSE")
            shape = output_shape(config, model, layer)
            if len(shape) != 4:
                raise ConfigError(f"{where}.models.{model}: layer {layer!r} outputs shape {shape}, which has no "
                                  "spatial maps; LaViSE needs a convolutional layer")
            _check_units(filter_list(settings), shape[1], f"lavise.filters ({model} {layer})", "filters")


def dataset_models(config: dict, dataset: str) -> list[str]:
    """The models whose classes label a dataset of a user's images: every model an experiment evaluates on it,
    except those the workflow trains (a model trained on the dataset takes the dataset's classes)."""
    served: list[str] = []
    for exp in config["experiments"].values():
        if exp["dataset"] == dataset:
            served += [m for m in exp["models"] if m not in served and "train" not in config["models"][m]]
    return served


def model_classes(config: dict, model: str) -> ModelClasses:
    """How many classes `models.<model>` outputs and their names, where it carries them."""
    names = getattr(configured_model(config, model), "vislib_class_names", [])
    return ModelClasses(model, output_shape(config, model, None)[1], tuple(names))


def dataset_model_classes(config: dict, dataset: str) -> dict[str, Any] | None:
    """The classes that label a dataset of a user's images, as the prepare job takes them (the fields of a
    `ModelClasses`): those of the first model it serves that carries class names, else of the first model; None
    for other dataset kinds and for a dataset no such model uses (it keeps its own classes)."""
    if DATASETS[config["datasets"][dataset]["kind"]].source_classes is None:
        return None
    served = [model_classes(config, model) for model in dataset_models(config, dataset)]
    if not served:
        return None
    chosen = next((classes for classes in served if classes.names), served[0])
    return {"model": chosen.model, "count": chosen.count, "names": list(chosen.names)}


def _check_user_images(config: dict) -> None:
    """A dataset of a user's images exists, has images, makes the configured split, and maps every class onto a
    class of each model an experiment evaluates on it, the same way for all of them (a dataset has one label per
    image)."""
    for name, spec in config["datasets"].items():
        kind = DATASETS[spec["kind"]]
        if kind.source_classes is None:
            continue
        where = f"datasets.{name}"
        params = kind.parse_params(spec["kind"], spec.get("params"))
        found: dict[str | None, SourceClasses] = {}
        served: list[ModelClasses | None] = [model_classes(config, m) for m in dataset_models(config, name)]
        for classes in served or [None]:
            try:
                found[classes.model if classes else None] = kind.source_classes(params, classes)
            except VislibError as exc:
                raise ConfigError(f"{where}: {exc}") from None
        (first_model, first), *others = found.items()
        split = spec.get("split", "val")
        if split not in first.splits:
            raise ConfigError(f"{where}.split is {split!r}, but its params make split(s) {', '.join(first.splits)}; "
                              "set `split` to one of them (or the kind's split parameter to it)")
        for model, mapped in others:
            differing = [key for key in {**first.labels, **mapped.labels}
                         if mapped.labels.get(key) != first.labels.get(key)]
            if differing:
                key = differing[0]
                raise ConfigError(f"{where}: {key!r} is class {first.labels.get(key)} of model {first_model!r} but "
                                  f"{mapped.labels.get(key)} of model {model!r}, and a dataset has one label per "
                                  "image; give each model its own dataset entry (same params) and experiment")
