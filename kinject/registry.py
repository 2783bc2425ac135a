"""Named implementations chosen from config: suites, background and knowledge sources, infusion formats.

A new one is one function or class registered under a name, plus a YAML file that names it;
validation reads the accepted names from the registry, so nothing else lists them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from kinject.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, key: str) -> None:
        self.key = key
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def add(entry: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.key}: {name!r} is registered twice")
            self._entries[name] = entry
            return entry

        return add

    def get(self, name: str) -> T:
        if name not in self._entries:
            raise ConfigError(self.key, f"one of {', '.join(self.names())}", name)
        return self._entries[name]

    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)
