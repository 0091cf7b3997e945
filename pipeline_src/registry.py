"""A name -> builder registry, the only indirection the project needs.

Builders register themselves with a decorator in the module that defines them. A registry knows, for each
name, which module to import, so nothing is imported until it is asked for (`import torch` and friends stay
out of `python -m pipeline_src --help`). Unknown names raise with the list of known ones.
"""
from __future__ import annotations

import importlib
from typing import Any, Callable

from pipeline_src.errors import UnknownNameError


class Registry:
    def __init__(self, kind: str, locations: dict[str, str] | None = None):
        self.kind = kind
        self._builders: dict[str, Callable[..., Any]] = {}
        # name -> module that registers it (imported on first use)
        self._locations: dict[str, str] = dict(locations or {})

    def register(self, name: str | None = None) -> Callable:
        def deco(obj):
            key = name or obj.__name__
            if key in self._builders and self._builders[key] is not obj:
                raise KeyError(f"{self.kind} {key!r} is registered twice")
            self._builders[key] = obj
            return obj

        return deco

    def names(self) -> list[str]:
        return sorted(set(self._builders) | set(self._locations))

    def get(self, name: str) -> Callable[..., Any]:
        if name not in self._builders and name in self._locations:
            importlib.import_module(self._locations[name])
        if name not in self._builders:
            raise UnknownNameError(f"unknown {self.kind} {name!r}; known: {', '.join(self.names()) or '(none)'}")
        return self._builders[name]

    def build(self, name: str, *args, **kwargs):
        return self.get(name)(*args, **kwargs)

    def __contains__(self, name: str) -> bool:
        return name in self._builders or name in self._locations
