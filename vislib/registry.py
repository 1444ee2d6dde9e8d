"""String-keyed registries: every model, dataset, method and metric resolves from a name."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from vislib.errors import UnknownNameError

T = TypeVar("T")


class Registry(Generic[T]):
    """A named collection of factories of one kind (e.g. attribution methods)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator that registers a factory under `name`."""

        def decorate(entry: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = entry
            return entry

        return decorate

    def __getitem__(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownNameError(unknown_name_message(self.kind, name, self.names())) from None

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._entries))

    def names(self) -> list[str]:
        """All registered names, sorted."""
        return sorted(self._entries)


def unknown_name_message(kind: str, name: str, valid: list[str], limit: int = 20) -> str:
    """Message for an unknown name, listing the closest valid choices first."""
    close = difflib.get_close_matches(name, valid, n=5, cutoff=0.5)
    shown = close + [v for v in valid if v not in close]
    more = f" (and {len(shown) - limit} more)" if len(shown) > limit else ""
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return f"unknown {kind} {name!r}.{hint} Valid choices: {', '.join(shown[:limit])}{more}"
