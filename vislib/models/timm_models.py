"""timm models by name ('timm:<name>'), with the preprocessing of their pretrained config.

timm is optional (`pip install vislib[timm]`). Pretrained weights are read from the Hugging Face cache only:
these runs never download.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager

from vislib.errors import ConfigError, MissingWeightsError
from vislib.models.registry import ARCH_FAMILIES, ArchFamily, LoadedModel, ModelBuilder
from vislib.preprocessing import Preprocessing, imagenet_class_names

PREFIX = "timm:"
PRETRAINED = "pretrained"


def _timm():
    try:
        import timm
    except ImportError:
        raise ConfigError("timm models need the timm package: pip install 'vislib[timm]' (or pip install timm)") \
            from None
    return timm


@contextmanager
def _offline() -> Iterator[None]:
    """Let timm read the Hugging Face cache but never reach the network.

    huggingface_hub reads HF_HUB_OFFLINE once, when it is imported, so the flag is set on its constants.
    """
    from huggingface_hub import constants

    previous = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = previous


def _build(name: str, weights: str, num_classes: int | None) -> LoadedModel:
    timm = _timm()
    if weights not in ("random", PRETRAINED):
        raise ConfigError(f"weights {weights!r} of timm model {name!r}: use 'random', '{PRETRAINED}' (from the "
                          "Hugging Face cache) or a checkpoint path")
    kwargs = {"num_classes": num_classes} if num_classes else {}
    if weights == PRETRAINED:
        try:
            with _offline():
                module = timm.create_model(name, pretrained=True, **kwargs)
        except Exception as exc:  # huggingface_hub raises several types for a file not in the cache
            raise MissingWeightsError(
                f"pretrained weights of timm model {name!r} are not in the Hugging Face cache ({exc}). On a "
                f"machine with internet access run: python -c \"import timm; timm.create_model('{name}', "
                "pretrained=True)\" and copy ~/.cache/huggingface here, or use weights: random or a checkpoint path"
            ) from exc
    else:
        module = timm.create_model(name, pretrained=False, **kwargs)
    config = timm.data.resolve_data_config({}, model=module)
    preprocessing = Preprocessing(tuple(config["mean"]), tuple(config["std"]), int(config["input_size"][-1]))
    classes = imagenet_class_names() if module.num_classes == 1000 else []
    return LoadedModel(module, preprocessing, classes)


def _resolve(arch: str) -> ModelBuilder | None:
    if not arch.startswith(PREFIX):
        return None
    name = arch.removeprefix(PREFIX)
    if not _timm().is_model(name):
        return None
    return functools.partial(_build, name)


@functools.cache
def _names() -> list[str]:
    try:
        import timm
    except ImportError:
        return []
    return [PREFIX + name for name in timm.list_models()]


ARCH_FAMILIES.append(ArchFamily("'timm:<name>' for any timm model (timm.list_models)", _resolve, _names))
