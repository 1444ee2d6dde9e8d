"""Semantic checks of a workflow config (the JSON schema checks types) and what jobs it implies."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import torch

from vislib import featvis, methods, metrics, models
from vislib.data import DATASETS
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


@functools.cache
def _random_model(arch: str, num_classes: int | None) -> torch.nn.Module:
    return models.load(arch, "random", num_classes=num_classes)


@functools.cache
def _layers_of(arch: str, num_classes: int | None) -> tuple[str, ...]:
    return tuple(models.layer_names(_random_model(arch, num_classes)))


@functools.cache
def _output_shape(arch: str, num_classes: int | None, layer: str | None) -> tuple[int, ...]:
    """Shape of `layer`'s output (the logits for None) on one image of the model's input size."""
    model = _random_model(arch, num_classes)
    size = models.preprocessing_of(model).input_size
    sample = torch.zeros(1, 3, size, size)
    if layer is None:
        with torch.no_grad():
            return tuple(model(sample).shape)
    return probe_layer(model, layer, sample)[0]


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


def _checked_layers(config: dict, models_block: dict[str, list[str]],
                    where: str) -> list[tuple[str, str, int | None, str]]:
    """(model, arch, num_classes, layer) of every layer an experiment block names, after checking each exists."""
    checked = []
    for model, layers in models_block.items():
        _known("model", model, list(config["models"]), f"{where}.models (configured under `models:`)")
        spec = config["models"][model]
        arch, num_classes = spec["arch"], spec.get("num_classes")
        valid_layers = list(_layers_of(arch, num_classes))
        for layer in layers:
            _known(f"layer of {arch}", layer, valid_layers, f"{where}.models.{model}")
            checked.append((model, arch, num_classes, layer))
    return checked


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
        _known("model", spec["arch"], models.MODELS.names(), f"models.{name}.arch")
        if "train" in spec:
            _known("dataset", spec["train"]["dataset"], list(config["datasets"]), f"models.{name}.train.dataset")
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
        _checked_layers(config, exp["models"], where)
    _check_featvis(config)
    _check_lavise(config)


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
        for model, arch, num_classes, layer in _checked_layers(config, block["models"], where):
            if "channels" in sources and "channels" in block:
                shape = _output_shape(arch, num_classes, layer)
                _check_units(unit_indices(block["channels"]), shape[1], f"{where}.channels ({model} {layer})",
                             "channels")
        if "classes" in sources and "classes" in block:
            for model in block["models"]:
                spec = config["models"][model]
                n_classes = _output_shape(spec["arch"], spec.get("num_classes"), None)[1]
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
        for model, arch, num_classes, layer in _checked_layers(config, block["models"], where):
            shape = _output_shape(arch, num_classes, layer)
            if len(shape) != 4:
                raise ConfigError(f"{where}.models.{model}: layer {layer!r} outputs shape {shape}, which has no "
                                  "spatial maps; LaViSE needs a convolutional layer")
            _check_units(filter_list(settings), shape[1], f"lavise.filters ({model} {layer})", "filters")
