"""Name -> builder registries for models, data sets, trainers and recipes (timm's pattern).

Builders are plain functions registered by name; a duplicate name is an error, and an unknown name
lists the known ones.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
from collections.abc import Callable
from typing import Any

from mlenv.errors import ConfigError


class Registry:
    """A named table of builders, filled when the modules listed in ``modules`` are imported."""

    def __init__(self, kind: str, modules: tuple[str, ...] = ()) -> None:
        self.kind = kind
        self._modules = modules
        self._loaded = False
        self._entries: dict[str, Callable[..., Any]] = {}
        self._info: dict[str, dict[str, Any]] = {}

    def register(
        self, name: str, **info: Any
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator: ``@MODELS.register("mlp")``. ``info`` is kept as metadata for the builder."""

        def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = fn
            self._info[name] = info
            return fn

        return decorate

    def _load(self) -> None:
        if not self._loaded:
            self._loaded = True
            for module in self._modules:
                importlib.import_module(module)

    def names(self) -> list[str]:
        self._load()
        return sorted(self._entries)

    def get(self, name: str) -> Callable[..., Any]:
        self._load()
        if name not in self._entries:
            close = difflib.get_close_matches(name, self._entries, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            known = ", ".join(self.names())
            raise ConfigError(f"unknown {self.kind} {name!r}{hint}; known: {known}")
        return self._entries[name]

    def info(self, name: str) -> dict[str, Any]:
        self.get(name)
        return self._info[name]

    def describe(self, name: str) -> str:
        """First line of the builder's docstring."""
        doc = inspect.getdoc(self.get(name)) or ""
        return doc.splitlines()[0] if doc else ""

    def create(self, name: str, **kwargs: Any) -> Any:
        """Build ``name`` with ``kwargs``; unset arguments keep the builder's defaults."""
        fn = self.get(name)
        params = inspect.signature(fn).parameters
        unknown = [k for k in kwargs if k not in params]
        if unknown and not any(p.kind is p.VAR_KEYWORD for p in params.values()):
            allowed = ", ".join(params)
            raise ConfigError(
                f"{self.kind} {name!r} has no argument {', '.join(unknown)}; allowed: {allowed}"
            )
        return fn(**kwargs)
