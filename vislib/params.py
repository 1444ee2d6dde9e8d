"""Typed parameter declarations: one frozen dataclass per method, featvis method, metric and dataset kind.

A declaration lists each parameter once, with its type, default, bounds or choices and a one-line help
(`param`). `parse` checks a config's values against it (unknown names get a "did you mean"), the config
check calls it before any job starts, and `describe` feeds `vislib list` and the docs' parameter tables.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar, cast

from vislib.errors import ConfigError

D = TypeVar("D")

_BOUNDS = ("minimum", "maximum", "exclusive_minimum", "exclusive_maximum")


def param(default: Any, help: str, *, choices: Sequence[Any] | None = None, minimum: float | None = None,
          maximum: float | None = None, exclusive_minimum: float | None = None,
          exclusive_maximum: float | None = None) -> Any:
    """A declared parameter: its default, a one-line help and the values it may take."""
    metadata = {"help": help, "choices": tuple(choices) if choices is not None else None,
                "minimum": minimum, "maximum": maximum, "exclusive_minimum": exclusive_minimum,
                "exclusive_maximum": exclusive_maximum}
    if isinstance(default, list | dict):
        return dataclasses.field(default_factory=lambda: copy.deepcopy(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


@dataclasses.dataclass(frozen=True)
class NoParams:
    """The declaration of something that takes no parameters."""


def with_defaults(declaration: type[D], **defaults: Any) -> type[D]:
    """A subclass of `declaration` whose named parameters have new defaults (help and bounds kept)."""
    fields = {f.name: f for f in dataclasses.fields(declaration)}  # type: ignore[arg-type]
    unknown = sorted(set(defaults) - set(fields))
    if unknown:
        raise TypeError(f"{declaration.__name__} has no parameter {unknown[0]!r}")
    annotations = {name: fields[name].type for name in defaults}
    namespace: dict[str, Any] = {"__annotations__": annotations, "__module__": declaration.__module__,
                                 "__doc__": declaration.__doc__}
    for name, value in defaults.items():
        meta = dict(fields[name].metadata)
        namespace[name] = param(value, meta.pop("help"), **meta)
    return dataclasses.dataclass(frozen=True)(type(declaration.__name__, (declaration,), namespace))


@dataclasses.dataclass(frozen=True)
class ParamInfo:
    """One declared parameter, for listings and docs."""

    name: str
    type: str
    default: Any
    help: str
    allowed: str


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(arg) for arg in typing.get_args(tp))
    if origin is not None:
        return f"{origin.__name__}[{', '.join(_type_name(arg) for arg in typing.get_args(tp))}]"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _allowed(meta: Mapping[str, Any]) -> str:
    if meta.get("choices") is not None:
        return ", ".join(str(c) for c in meta["choices"])
    parts = []
    for key, symbol in (("minimum", ">="), ("exclusive_minimum", ">"), ("maximum", "<="),
                        ("exclusive_maximum", "<")):
        if meta.get(key) is not None:
            parts.append(f"{symbol} {meta[key]:g}")
    return ", ".join(parts)


def _default_of(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    factory = cast(Callable[[], Any], field.default_factory)
    return factory()


def describe(declaration: type) -> list[ParamInfo]:
    """Every parameter of a declaration: name, type, default, help and allowed values."""
    hints = typing.get_type_hints(declaration)
    return [ParamInfo(f.name, _type_name(hints[f.name]), _default_of(f), f.metadata.get("help", ""),
                      _allowed(f.metadata)) for f in dataclasses.fields(declaration)]


def defaults(declaration: type) -> dict[str, Any]:
    """The declaration's parameters with their default values."""
    return {f.name: _default_of(f) for f in dataclasses.fields(declaration)}


def _accepts(tp: Any, value: Any) -> bool:
    origin = typing.get_origin(tp)
    if tp is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_accepts(arg, value) for arg in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if origin in (list, tuple):
        args = typing.get_args(tp)
        return isinstance(value, list | tuple) and all(_accepts(args[0], item) for item in value)
    if origin is dict:
        key_type, value_type = typing.get_args(tp)
        return isinstance(value, dict) and all(_accepts(key_type, k) and _accepts(value_type, v)
                                               for k, v in value.items())
    return isinstance(value, tp)


def _as_declared(tp: Any, value: Any) -> Any:
    """An int given for a float parameter becomes a float; tuples from YAML-free callers become lists."""
    if tp is float and isinstance(value, int):
        return float(value)
    if typing.get_origin(tp) is list and isinstance(value, tuple):
        return list(value)
    return value


def _check_bounds(owner: str, name: str, meta: Mapping[str, Any], value: Any) -> None:
    if meta.get("choices") is not None and value not in meta["choices"]:
        close = difflib.get_close_matches(str(value), [str(c) for c in meta["choices"]], n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"{owner}: parameter {name!r} must be one of {', '.join(map(repr, meta['choices']))}, "
                          f"got {value!r}{hint}")
    if not isinstance(value, int | float) or isinstance(value, bool):
        return
    checks = (("minimum", lambda v, b: v >= b, ">="), ("maximum", lambda v, b: v <= b, "<="),
              ("exclusive_minimum", lambda v, b: v > b, ">"), ("exclusive_maximum", lambda v, b: v < b, "<"))
    for key, ok, symbol in checks:
        bound = meta.get(key)
        if bound is not None and not ok(value, bound):
            raise ConfigError(f"{owner}: parameter {name!r} must be {symbol} {bound:g}, got {value!r}")


def unknown_key_message(owner: str, key: str, valid: Sequence[str], what: str = "key") -> str:
    """`owner` has no `key`: a message with the closest valid key and all valid keys."""
    close = difflib.get_close_matches(key, list(valid), n=1, cutoff=0.6)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return f"{owner} has no {what} {key!r}.{hint} Valid: {', '.join(sorted(valid)) or 'none'}"


def parse(owner: str, declaration: type[D], given: Mapping[str, Any] | None) -> D:
    """`given` checked against `declaration` (names, types, bounds, choices) and filled with defaults.

    `owner` names the thing in messages, e.g. "method 'gradcam'". Checks across parameters live in the
    declaration's `__post_init__`, which raises ConfigError.
    """
    given = dict(given or {})
    hints = typing.get_type_hints(declaration)
    fields = {f.name: f for f in dataclasses.fields(declaration)}  # type: ignore[arg-type]
    for key in given:
        if key not in fields:
            raise ConfigError(unknown_key_message(owner, key, list(fields), what="parameter"))
    values = {}
    for key, value in given.items():
        tp = hints[key]
        if not _accepts(tp, value):
            raise ConfigError(f"{owner}: parameter {key!r} must be {_type_name(tp)}, got {value!r} "
                              f"({type(value).__name__})")
        value = _as_declared(tp, value)
        _check_bounds(owner, key, fields[key].metadata, value)
        values[key] = value
    return declaration(**values)


def as_dict(instance: Any) -> dict[str, Any]:
    """A parsed declaration as a plain dict (what method code reads as `self.params`)."""
    return {f.name: copy.deepcopy(getattr(instance, f.name)) for f in dataclasses.fields(instance)}
