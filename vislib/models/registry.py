"""Registry of model builders, weight resolution and layer lookup by dotted name."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from vislib.errors import LayerError, MissingWeightsError, VislibError
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


def load(name: str, weights: str = "random", device: str | torch.device = "cpu",
         num_classes: int | None = None) -> nn.Module:
    """Build model `name` with `weights` ('random', a pretrained name or a checkpoint path), in eval mode."""
    builder = MODELS[name]
    path = Path(weights)
    if weights not in ("random",) and (path.suffix in (".pt", ".pth") or path.exists()):
        loaded = _load_checkpoint(name, builder, path)
    else:
        loaded = builder(weights, num_classes)
    module = loaded.module
    # setattr: nn.Module types its attributes as tensors or modules; these are plain values the model carries.
    setattr(module, "vislib_preprocessing", loaded.preprocessing)  # noqa: B010
    setattr(module, "vislib_class_names", list(loaded.class_names))  # noqa: B010
    setattr(module, "vislib_default_layer", loaded.default_layer)  # noqa: B010
    setattr(module, "vislib_name", name)  # noqa: B010
    return module.eval().to(device)


def _load_checkpoint(name: str, builder: ModelBuilder, path: Path) -> LoadedModel:
    if not path.exists():
        raise MissingWeightsError(
            f"checkpoint {str(path)!r} for model {name!r} does not exist; train it first "
            "(the workflow's train rule writes it) or point `weights` at an existing file"
        )
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a corrupt file
        raise VislibError(f"checkpoint {str(path)!r} cannot be read ({exc}); delete it and retrain") from exc
    state = checkpoint.get("state_dict", checkpoint)
    class_names = list(checkpoint.get("class_names", []))
    num_classes = len(class_names) or None
    loaded = builder("random", num_classes)
    try:
        loaded.module.load_state_dict(state)
    except RuntimeError as exc:
        raise VislibError(f"checkpoint {str(path)!r} does not fit architecture {name!r}: {exc}") from exc
    if class_names:
        loaded.class_names = class_names
    return loaded


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


def spatial_layer_names(model: nn.Module, input_size: int | None = None) -> list[str]:
    """Names of layers whose output is a [N,C,H,W] map with H,W > 1 (where CAM-style methods apply)."""
    size = input_size or preprocessing_of(model).input_size
    shapes: dict[str, tuple[int, ...]] = {}
    handles = []
    for layer_name, module in model.named_modules():
        if not layer_name:
            continue

        def record(_m, _i, output, layer_name=layer_name):
            if isinstance(output, torch.Tensor):
                shapes[layer_name] = tuple(output.shape)

        handles.append(module.register_forward_hook(record))
    try:
        device = next(model.parameters()).device
        with torch.no_grad():
            model(torch.zeros(1, 3, size, size, device=device))
    finally:
        for handle in handles:
            handle.remove()
    return [n for n, s in shapes.items() if len(s) == 4 and s[2] * s[3] > 1]


def missing_weights(name: str, weights: str, url: str, filename: str) -> MissingWeightsError:
    """Error for pretrained weights that are not in the local cache."""
    return MissingWeightsError(
        f"weights {weights!r} of model {name!r} are not in the local cache and cannot be downloaded "
        f"here. Download {url} and place it at {filename}, or use weights: random"
    )
