"""A user's own network: a factory function named in the config, or a TorchScript file."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vislib.errors import ConfigError, MissingWeightsError


def import_factory(reference: str) -> Callable[..., Any]:
    """The function `reference` names: 'package.module:function' or 'path/to/file.py:function'."""
    module_part, colon, function_name = reference.rpartition(":")
    if not colon or not module_part or not function_name:
        raise ConfigError(f"factory {reference!r} must be 'package.module:function' or 'path/to/file.py:function'")
    if module_part.endswith(".py"):
        module = _module_from_file(Path(module_part), reference)
    else:
        try:
            module = importlib.import_module(module_part)
        except Exception as exc:  # the user's module may fail in any way while it imports
            raise ConfigError(f"factory {reference!r}: module {module_part!r} cannot be imported "
                              f"({type(exc).__name__}: {exc}); is it installed or on PYTHONPATH?") from exc
    factory = getattr(module, function_name, None)
    if not callable(factory):
        public = [name for name, value in vars(module).items() if callable(value) and not name.startswith("_")]
        raise ConfigError(f"factory {reference!r}: {module_part!r} has no function {function_name!r}; "
                          f"it defines {', '.join(sorted(public)) or 'no public function'}")
    return factory


def _module_from_file(path: Path, reference: str) -> Any:
    if not path.is_file():
        raise ConfigError(f"factory {reference!r}: file {str(path)!r} does not exist")
    name = f"vislib_user_model_{abs(hash(str(path.resolve())))}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"factory {reference!r}: {str(path)!r} is not a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # the user's file may fail in any way while it runs
        del sys.modules[name]
        raise ConfigError(f"factory {reference!r}: {str(path)!r} fails to import "
                          f"({type(exc).__name__}: {exc})") from exc
    return module


def build_from_factory(reference: str, arguments: dict[str, Any]) -> nn.Module:
    """Call the factory with `arguments`; it must return an nn.Module."""
    factory = import_factory(reference)
    try:
        inspect.signature(factory).bind(**arguments)
    except TypeError as exc:
        raise ConfigError(f"factory {reference!r} does not take factory_args {sorted(arguments)}: {exc}") from None
    try:
        module = factory(**arguments)
    except Exception as exc:  # the user's code may fail in any way
        raise ConfigError(f"factory {reference!r} failed ({type(exc).__name__}: {exc})") from exc
    if not isinstance(module, nn.Module):
        raise ConfigError(f"factory {reference!r} returned {type(module).__name__}, not a torch.nn.Module")
    return module


def load_torchscript(path: str) -> nn.Module:
    """A TorchScript file saved with `torch.jit.save`, on the CPU."""
    if not Path(path).is_file():
        raise MissingWeightsError(f"TorchScript file {path!r} does not exist")
    try:
        return torch.jit.load(path, map_location="cpu")
    except Exception as exc:  # torch raises many types for a file that is not TorchScript
        raise ConfigError(f"{path!r} is not a TorchScript file ({exc}); save the model with torch.jit.save, "
                          "or give its Python class with `factory:` and the state dict as `weights:`") from exc


def is_torchscript(model: nn.Module) -> bool:
    """Whether `model` runs a compiled TorchScript graph (forward hooks on its layers never fire)."""
    return isinstance(model, torch.jit.ScriptModule)
