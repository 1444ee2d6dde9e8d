"""Registry of model builders, weight resolution and layer lookup by dotted name."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from vislib.errors import ConfigError, LayerError, MissingWeightsError, UnknownNameError, VislibError
from vislib.models.layout import LAYOUTS_ATTRIBUTE, LayerProbe, Layout, probe_layers
from vislib.models.user import is_torchscript
from vislib.preprocessing import Preprocessing
from vislib.registry import Registry, unknown_name_message


@dataclass
class LoadedModel:
    """What a builder returns: the network, its preprocessing and its class names."""

    module: nn.Module
    preprocessing: Preprocessing
    class_names: list[str] = field(default_factory=list)
    default_layer: str = ""


ModelBuilder = Callable[[str, int | None], LoadedModel]
"""builder(weights, num_classes) -> LoadedModel; weights is 'random' or a pretrained name."""

MODELS: Registry[ModelBuilder] = Registry("model")


@dataclass(frozen=True)
class ArchFamily:
    """Architectures known by name without a registration each (every torchvision classification model, timm)."""

    describe: str  # how a config names them, for error messages
    resolve: Callable[[str], ModelBuilder | None]
    names: Callable[[], list[str]]  # the names offered when an arch is misspelt


ARCH_FAMILIES: list[ArchFamily] = []


def builder_for(arch: str) -> ModelBuilder:
    """The builder of `arch`: a registered name, else the first family that knows it."""
    if arch in MODELS:
        return MODELS[arch]
    for family in ARCH_FAMILIES:
        builder = family.resolve(arch)
        if builder is not None:
            return builder
    valid = list(dict.fromkeys(MODELS.names() + [name for family in ARCH_FAMILIES for name in family.names()]))
    also = "; ".join(family.describe for family in ARCH_FAMILIES)
    raise UnknownNameError(f"{unknown_name_message('model', arch, valid)}. Also accepted: {also}; a network of "
                           "your own goes under `factory:` or `torchscript:` (docs/your-model.md)")


def load(name: str, weights: str = "random", device: str | torch.device = "cpu",
         num_classes: int | None = None) -> nn.Module:
    """Build model `name` with `weights` ('random', a pretrained name or a checkpoint path), in eval mode.

    `name` is a registered architecture, any torchvision classification model or 'timm:<name>'.
    """
    return finish(build(name, weights, num_classes), name, device)


def is_checkpoint_path(weights: str) -> bool:
    """Whether a `weights` value names a file rather than 'random' or a pretrained name."""
    path = Path(weights)
    return weights != "random" and (path.suffix in (".pt", ".pth", ".ckpt", ".bin") or "/" in weights
                                    or path.exists())


def build(name: str, weights: str = "random", num_classes: int | None = None) -> LoadedModel:
    """The LoadedModel of architecture `name` with `weights`, before it is finished by `finish`."""
    builder = builder_for(name)
    if is_checkpoint_path(weights):
        checkpoint = read_checkpoint(weights, name)
        class_names = list(checkpoint.class_names)
        loaded = builder("random", len(class_names) or num_classes)
        load_state(loaded.module, checkpoint.state, weights, name)
        if class_names:
            loaded.class_names = class_names
        return loaded
    return builder(weights, num_classes)


def finish(loaded: LoadedModel, name: str, device: str | torch.device = "cpu") -> nn.Module:
    """The network in eval mode on `device`, carrying its preprocessing, class names, default layer, name and the
    layout of every layer with a spatial output (`models.layout`).

    Without a default layer from the builder, `LayerProbe.default_layer` picks it: the last layer with a spatial
    output whose grid the class scores depend on.
    """
    module = loaded.module.eval().to(device)
    default_layer = loaded.default_layer
    if not is_torchscript(module):
        if torch.device(device).type == "cpu":
            # Methods run the batch channels-last on CPU (methods.base.fast_layout); convolution weights in the same
            # layout spare oneDNN a reorder of each weight on every pass.
            module.to(memory_format=torch.channels_last)
        probe = _probe(module, loaded.preprocessing.input_size, name, gradients=not default_layer)
        default_layer = default_layer or probe.default_layer()
        # The layouts go with the model, so every method reads a layer's grid the same way (models/layout.py).
        setattr(module, LAYOUTS_ATTRIBUTE, probe.layouts)
    # setattr: nn.Module types its attributes as tensors or modules; these are plain values the model carries.
    setattr(module, "vislib_preprocessing", loaded.preprocessing)  # noqa: B010
    setattr(module, "vislib_class_names", list(loaded.class_names))  # noqa: B010
    setattr(module, "vislib_default_layer", default_layer)  # noqa: B010
    setattr(module, "vislib_name", name)  # noqa: B010
    return module


@dataclass
class Checkpoint:
    """A state dict read from a file, with the class names vislib's training stores beside it."""

    state: dict[str, torch.Tensor]
    class_names: list[str]


def read_checkpoint(path_name: str, model: str) -> Checkpoint:
    """The state dict of a checkpoint file: plain, or under 'state_dict' or 'model' (a training loop's dict)."""
    path = Path(path_name)
    if not path.exists():
        raise MissingWeightsError(
            f"checkpoint {str(path)!r} for model {model!r} does not exist; train it first "
            "(the workflow's train rule writes it) or point `weights` at an existing file"
        )
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a corrupt file
        raise VislibError(f"checkpoint {str(path)!r} cannot be read ({exc}); save a state dict with "
                          "torch.save(model.state_dict(), path), or delete it and retrain") from exc
    if not isinstance(checkpoint, dict):
        raise VislibError(f"checkpoint {str(path)!r} holds a {type(checkpoint).__name__}, not a state dict; save "
                          "model.state_dict() instead of the whole model")
    state = next((checkpoint[key] for key in ("state_dict", "model") if isinstance(checkpoint.get(key), dict)),
                 checkpoint)
    # nn.DataParallel and DistributedDataParallel save every name under 'module.'.
    if state and all(key.startswith("module.") for key in state):
        state = {key.removeprefix("module."): value for key, value in state.items()}
    return Checkpoint(state, list(checkpoint.get("class_names", [])))


def load_state(module: nn.Module, state: dict[str, torch.Tensor], path: str, model: str) -> None:
    """Load `state` into `module`, naming what does not fit."""
    own = module.state_dict()
    missing = [key for key in own if key not in state]
    unexpected = [key for key in state if key not in own]
    wrong_shape = [f"{key} {tuple(state[key].shape)} vs {tuple(own[key].shape)}" for key in own
                   if key in state and tuple(state[key].shape) != tuple(own[key].shape)]
    if missing or unexpected or wrong_shape:
        parts = [f"{len(items)} {what} (e.g. {', '.join(items[:3])})" for what, items in
                 (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", wrong_shape))
                 if items]
        raise VislibError(f"checkpoint {path!r} does not fit model {model!r}: {'; '.join(parts)}. Is it the same "
                          "architecture with the same num_classes?")
    module.load_state_dict(state)


def preprocessing_of(model: nn.Module) -> Preprocessing:
    """The preprocessing a model loaded by `load` carries."""
    preprocessing = getattr(model, "vislib_preprocessing", None)
    if not isinstance(preprocessing, Preprocessing):
        raise VislibError("model was not loaded with vislib.models.load; it carries no preprocessing")
    return preprocessing


def default_layer_of(model: nn.Module) -> str:
    """The layer a model loaded by `load` is explained at when the config names none."""
    layer = getattr(model, "vislib_default_layer", None)
    if not isinstance(layer, str):
        raise VislibError("model was not loaded with vislib.models.load; it has no default layer")
    return layer


def layer_names(model: nn.Module) -> list[str]:
    """Dotted names of every submodule (the names `resolve_layer` accepts)."""
    return [name for name, _ in model.named_modules() if name]


def resolve_layer(model: nn.Module, name: str) -> nn.Module:
    """The submodule called `name`; the error lists the nearest valid names."""
    modules = dict(model.named_modules())
    if name and name in modules:
        return modules[name]
    raise LayerError(
        unknown_name_message(f"layer of {getattr(model, 'vislib_name', type(model).__name__)}",
                             name, layer_names(model))
    )


def _probe(model: nn.Module, input_size: int, name: str, gradients: bool) -> LayerProbe:
    try:
        return probe_layers(model, input_size, gradients)
    except Exception as exc:  # a user's network may fail in any way on a wrong input size
        raise ConfigError(f"model {name!r} fails on a [1,3,{input_size},{input_size}] input "
                          f"({type(exc).__name__}: {exc}); set its `input_size`") from exc


def last_spatial_layer(model: nn.Module, input_size: int) -> str:
    """The default layer of a model without one of its own ('' if no layer has a spatial output).

    The last layer, among those with the final feature map's shape, whose map the class scores depend on
    (`LayerProbe.default_layer`): in a CNN the outermost block that outputs the last feature map (e.g.
    torchvision's `layer4`), where CAM-style methods look; in a vision transformer the last block's first norm.
    TorchScript models run no hooks: ''.
    """
    if is_torchscript(model):
        return ""
    return probe_layers(model, input_size, gradients=True).default_layer()


def layer_layouts(model: nn.Module, input_size: int | None = None) -> dict[str, Layout]:
    """The layout of each layer whose output holds a spatial grid of side > 1, in layer order: [N,C,H,W] maps,
    channels-last [N,H,W,C] maps and the patch tokens of vision transformers (`models.layout`).

    The layouts the model carries from `load`, or those of a probe at `input_size` (the model's own by default).
    """
    layouts = getattr(model, LAYOUTS_ATTRIBUTE, None) if input_size is None else None
    if layouts is None:
        layouts = probe_layers(model, input_size or preprocessing_of(model).input_size).layouts
    return {name: layouts[name] for name in layer_names(model) if name in layouts}


def spatial_layer_names(model: nn.Module, input_size: int | None = None) -> list[str]:
    """Names of layers whose output holds a spatial grid of side > 1 (where CAM-style methods apply)."""
    return list(layer_layouts(model, input_size))


def missing_weights(name: str, weights: str, url: str, filename: str) -> MissingWeightsError:
    """Error for pretrained weights that are not in the local cache."""
    return MissingWeightsError(
        f"weights {weights!r} of model {name!r} are not in the local cache and cannot be downloaded "
        f"here. Download {url} and place it at {filename}, or use weights: random"
    )
