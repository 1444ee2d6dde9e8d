"""A model as the config describes it: an architecture by name, a user's factory function or a TorchScript file,
with optional weights, preprocessing, class names and default layer."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vislib.errors import ConfigError
from vislib.models.layout import model_device, probe_image
from vislib.models.registry import (
    LoadedModel,
    build,
    finish,
    is_checkpoint_path,
    load_state,
    read_checkpoint,
    resolve_layer,
)
from vislib.models.user import build_from_factory, load_torchscript
from vislib.preprocessing import IMAGENET, Preprocessing, imagenet_class_names

SOURCES = ("arch", "factory", "torchscript")


@dataclass(frozen=True)
class ModelSpec:
    """One `models:` entry of the config (its `train:` block aside).

    Exactly one of `arch` (a registered name, any torchvision classification model, 'timm:<name>'), `factory`
    ('package.module:function' or 'path/file.py:function', called with `factory_args`) and `torchscript` (a
    file). `weights`: 'random', a pretrained name, or a checkpoint file (a state dict). `input_size`, `mean`,
    `std`, `class_names` (a list, or a .txt file with one name per line, or a .json list) and `layer` (the
    default layer) override what the model brings; user models default to ImageNet's 224 px and statistics.
    """

    arch: str | None = None
    factory: str | None = None
    factory_args: dict[str, Any] = field(default_factory=dict)
    torchscript: str | None = None
    weights: str = "random"
    num_classes: int | None = None
    input_size: int | None = None
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    class_names: tuple[str, ...] | str | None = None
    layer: str | None = None

    @classmethod
    def from_config(cls, entry: Mapping[str, Any]) -> ModelSpec:
        """The spec of a config entry; keys that only the workflow reads (`train`) are left out."""
        known = {f.name for f in fields(cls)}
        values = {key: value for key, value in entry.items() if key in known and value is not None}
        for key in ("mean", "std"):
            if key in values:
                values[key] = tuple(float(v) for v in values[key])
        if isinstance(values.get("class_names"), list):
            values["class_names"] = tuple(values["class_names"])
        spec = cls(**values)
        spec.check()
        return spec

    @property
    def name(self) -> str:
        """What the model is called in messages and in the `vislib_name` it carries."""
        return self.arch or self.factory or Path(str(self.torchscript)).name

    def check(self) -> None:
        """Reject combinations no model can be built from, naming the keys."""
        given = [key for key in SOURCES if getattr(self, key)]
        if len(given) != 1:
            raise ConfigError(f"a model needs exactly one of {', '.join(SOURCES)}; got "
                              f"{', '.join(given) or 'none'}")
        if self.factory_args and not self.factory:
            raise ConfigError("factory_args are the arguments of `factory:`; this model has no factory")
        if self.torchscript and self.weights != "random":
            raise ConfigError(f"torchscript model {self.torchscript!r} carries its weights; drop `weights:`")
        if self.factory and not (self.weights == "random" or is_checkpoint_path(self.weights)):
            raise ConfigError(f"factory model {self.factory!r}: weights {self.weights!r} must be 'random' (the "
                              "factory's own) or a checkpoint file")
        if not self.arch and self.num_classes:
            raise ConfigError(f"num_classes applies to `arch:` models; pass it to {self.name!r} through "
                              "factory_args")
        for key in ("mean", "std"):
            value = getattr(self, key)
            if value is not None and len(value) != 3:
                raise ConfigError(f"model {self.name!r}: {key} needs 3 values (R, G, B), got {list(value)}")

    def files(self) -> list[str]:
        """The files the model is built from: a factory's .py file, a TorchScript file, a checkpoint."""
        found = []
        if self.factory and self.factory.rpartition(":")[0].endswith(".py"):
            found.append(self.factory.rpartition(":")[0])
        if self.torchscript:
            found.append(self.torchscript)
        if is_checkpoint_path(self.weights):
            found.append(self.weights)
        if isinstance(self.class_names, str):
            found.append(self.class_names)
        return found


def load_spec(spec: ModelSpec | Mapping[str, Any], device: str | torch.device = "cpu") -> nn.Module:
    """The network a config entry describes, in eval mode on `device`, carrying what `models.load` gives it.

    On device "meta" an `arch:` model with random weights is its structure alone: no weights are initialised or held
    (a random vgg16 took 1.5 s and 550 MB to build on the CPU), and shapes, layers and layouts are what they would be
    on the CPU. The config check probes models this way. A model that needs values to finish (weights to read, a
    user's factory or TorchScript file, or a default layer found from gradients) is built on the CPU instead.
    """
    if not isinstance(spec, ModelSpec):
        spec = ModelSpec.from_config(spec)
    if torch.device(device).type == "meta" and spec.arch and spec.weights == "random":
        loaded = _structure_or_cpu(spec.arch, spec)
        device = model_device(loaded.module)
    else:
        device = "cpu" if torch.device(device).type == "meta" else device
        loaded = build(spec.arch, spec.weights, spec.num_classes) if spec.arch else _user_model(spec)
    loaded = _with_overrides(loaded, spec)
    if spec.layer:
        resolve_layer(loaded.module, spec.layer)
    return finish(loaded, spec.name, device)


def _structure_or_cpu(arch: str, spec: ModelSpec) -> LoadedModel:
    """The architecture as structure alone on the meta device, or on the CPU where building it or finding its
    default layer needs values the meta device does not have (RegNet's constructor turns a tensor of block widths
    into a list; a default layer without a table entry comes from a probe's gradients)."""
    try:
        with torch.device("meta"):
            loaded = build(arch, spec.weights, spec.num_classes)
    except Exception:  # reading a meta tensor's values raises one of several types; a real error recurs on the CPU
        return build(arch, spec.weights, spec.num_classes)
    if spec.layer or loaded.default_layer:
        return loaded
    return build(arch, spec.weights, spec.num_classes)


def _user_model(spec: ModelSpec) -> LoadedModel:
    if spec.torchscript:
        module = load_torchscript(spec.torchscript)
    else:
        assert spec.factory is not None
        module = build_from_factory(spec.factory, dict(spec.factory_args))
        if spec.weights != "random":
            checkpoint = read_checkpoint(spec.weights, spec.name)
            load_state(module, checkpoint.state, spec.weights, spec.name)
    return LoadedModel(module.eval(), IMAGENET, [])


def _with_overrides(loaded: LoadedModel, spec: ModelSpec) -> LoadedModel:
    given = loaded.preprocessing
    preprocessing = Preprocessing(spec.mean or given.mean, spec.std or given.std, spec.input_size or given.input_size)
    class_names = list(loaded.class_names)
    if spec.class_names is not None or not (spec.arch or class_names):
        outputs = _output_count(loaded.module, preprocessing.input_size, spec.name)
        class_names = _class_names(spec, outputs)
    return LoadedModel(loaded.module, preprocessing, class_names, spec.layer or loaded.default_layer)


def _output_count(module: nn.Module, input_size: int, name: str) -> int:
    with torch.no_grad():
        try:
            logits = module(probe_image(input_size, model_device(module)))
        except Exception as exc:  # the user's network may fail in any way on a wrong input size
            raise ConfigError(f"model {name!r} fails on a [1,3,{input_size},{input_size}] input "
                              f"({type(exc).__name__}: {exc}); set its `input_size`") from exc
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ConfigError(f"model {name!r} must return logits [N, classes]; it returned {shape}")
    return int(logits.shape[1])


def _class_names(spec: ModelSpec, outputs: int) -> list[str]:
    """The configured class names, checked against the model's outputs; ImageNet's for 1000 outputs."""
    if spec.class_names is None:
        return imagenet_class_names() if outputs == 1000 else []
    if isinstance(spec.class_names, str):
        path = Path(spec.class_names)
        if not path.is_file():
            raise ConfigError(f"model {spec.name!r}: class_names file {spec.class_names!r} does not exist")
        text = path.read_text()
        if path.suffix == ".json":
            try:
                names = json.loads(text)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"model {spec.name!r}: class_names file {spec.class_names!r} is not JSON "
                                  f"({exc})") from None
            if not isinstance(names, list):
                raise ConfigError(f"model {spec.name!r}: class_names file {spec.class_names!r} must hold a JSON "
                                  f"list of names, not a {type(names).__name__}")
        else:
            names = [line.strip() for line in text.splitlines() if line.strip()]
    else:
        names = list(spec.class_names)
    if len(names) != outputs:
        raise ConfigError(f"model {spec.name!r}: {len(names)} class names for {outputs} outputs")
    return [str(name) for name in names]
