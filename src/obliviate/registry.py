"""One registry type for methods, models, datasets, metrics and pruners.

Example:
    >>> METHODS = Registry("method")
    >>> @METHODS.register("GA", tracks=("vision", "llm"))
    ... class GradientAscent: ...
    >>> METHODS.get("GA")  # doctest: +ELLIPSIS
    <class '...GradientAscent'>

Duplicate names are rejected; an unknown name raises :class:`UnknownNameError` listing the
closest registered names ("did you mean").
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from obliviate.errors import UnknownNameError

T = TypeVar("T")


class Registry(Generic[T]):
    """A name -> object mapping with metadata, aliases and helpful lookup errors.

    Args:
        kind: What the registry holds ("method", "model", ...); used in error messages.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._meta: dict[str, dict[str, Any]] = {}
        self._aliases: dict[str, str] = {}

    def register(
        self, name: str | None = None, *, aliases: tuple[str, ...] = (), **meta: Any
    ) -> Callable[[T], T]:
        """Decorator registering an object under ``name`` (default: its ``__name__``).

        Args:
            name: Registry key.
            aliases: Other names resolving to the same entry.
            **meta: Free-form metadata (e.g. ``tracks``, ``higher_is_better``).

        Raises:
            ValueError: ``name`` or an alias is already registered.
        """

        def decorator(obj: T) -> T:
            self.add(name or obj.__name__, obj, aliases=aliases, **meta)  # type: ignore[attr-defined]
            return obj

        return decorator

    def add(self, name: str, obj: T, *, aliases: tuple[str, ...] = (), **meta: Any) -> None:
        """Register ``obj`` under ``name`` (non-decorator form)."""
        for key in (name, *aliases):
            if key in self._items or key in self._aliases:
                raise ValueError(f"{self.kind} '{key}' is already registered; pick another name")
        self._items[name] = obj
        self._meta[name] = dict(meta)
        for alias in aliases:
            self._aliases[alias] = name

    def canonical(self, name: str) -> str:
        """The registered name for ``name`` (resolving aliases)."""
        if name in self._items:
            return name
        if name in self._aliases:
            return self._aliases[name]
        known = sorted([*self._items, *self._aliases])
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
        lowered = [k for k in known if k.lower() == str(name).lower() and k not in close]
        close = lowered + close
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise UnknownNameError(
            f"unknown {self.kind} '{name}'.{hint} Registered {self.kind}s: {', '.join(known)}"
        )

    def get(self, name: str) -> T:
        """The object registered as ``name``; raises :class:`UnknownNameError` if absent."""
        return self._items[self.canonical(name)]

    def meta(self, name: str) -> dict[str, Any]:
        """Metadata given at registration."""
        return self._meta[self.canonical(name)]

    def names(self, **where: Any) -> list[str]:
        """Registered names (no aliases), optionally filtered by metadata membership.

        ``names(tracks="vision")`` keeps entries whose ``tracks`` contains "vision".
        """
        out = []
        for key, meta in self._meta.items():
            ok = True
            for field, value in where.items():
                have = meta.get(field)
                if isinstance(have, (tuple, list, set, frozenset)):
                    ok &= value in have
                else:
                    ok &= have == value
            if ok:
                out.append(key)
        return out

    def __contains__(self, name: object) -> bool:
        return name in self._items or name in self._aliases

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)


# The project's registries. They live here, below every package that fills them, so that a
# module registering an entry never imports its own package's ``__init__`` (no import cycles);
# each package re-exports its registry (``from obliviate.methods import METHODS`` still works).
DATASETS: Registry = Registry("dataset")
METHODS: Registry = Registry("method")
METRICS: Registry = Registry("metric")
MODELS: Registry = Registry("model")
PRUNERS: Registry = Registry("pruner")
