"""Semantic checks of a workflow config (the JSON schema checks types) and what jobs it implies."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from vislib import methods, metrics, models
from vislib.data import DATASETS
from vislib.errors import ConfigError, VislibError
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


@functools.cache
def _layers_of(arch: str, num_classes: int | None) -> tuple[str, ...]:
    return tuple(models.layer_names(models.load(arch, "random", num_classes=num_classes)))


def _known(kind: str, name: str, valid: list[str], where: str) -> None:
    if name not in valid:
        raise ConfigError(f"{where}: {unknown_name_message(kind, name, valid)}")


def check_config(config: dict) -> None:
    """Fail before any job runs if the config names an unknown model, layer, method, metric or dataset."""
    for name, spec in config["datasets"].items():
        _known("dataset kind", spec["kind"], DATASETS.names(), f"datasets.{name}.kind")
    for name, spec in config["models"].items():
        _known("model", spec["arch"], models.MODELS.names(), f"models.{name}.arch")
        if "train" in spec:
            _known("dataset", spec["train"]["dataset"], list(config["datasets"]), f"models.{name}.train.dataset")
    for label in config["methods"]:
        registry_name, params = method_spec(config, label)
        _known("method", registry_name, methods.METHODS.names(), f"methods.{label}")
        try:
            methods.get(registry_name, **params)
        except VislibError as exc:
            raise ConfigError(f"methods.{label}: {exc}") from None
    for label in config["metrics"]:
        registry_name, params = metric_spec(config, label)
        _known("metric", registry_name, metrics.METRICS.names(), f"metrics.{label}")
        try:
            metrics.get(registry_name, **params)
        except VislibError as exc:
            raise ConfigError(f"metrics.{label}: {exc}") from None
    for exp_name, exp in config["experiments"].items():
        where = f"experiments.{exp_name}"
        _known("dataset", exp["dataset"], list(config["datasets"]), f"{where}.dataset")
        for method in exp["methods"]:
            _known("method", method, list(config["methods"]), f"{where}.methods (configured under `methods:`)")
        for metric in exp["metrics"]:
            _known("metric", metric, list(config["metrics"]), f"{where}.metrics (configured under `metrics:`)")
        for model, layers in exp["models"].items():
            _known("model", model, list(config["models"]), f"{where}.models (configured under `models:`)")
            spec = config["models"][model]
            valid_layers = list(_layers_of(spec["arch"], spec.get("num_classes")))
            for layer in layers:
                _known(f"layer of {spec['arch']}", layer, valid_layers, f"{where}.models.{model}")
