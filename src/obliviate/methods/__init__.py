"""Unlearning methods: one file per method, registered by name in :data:`METHODS`.

A registry entry is either a :class:`~obliviate.methods.base.UnlearningMethod` subclass (a
loss over forget/retain batch pairs, or a one-shot ``apply`` transform) or, for the seed-001
route, a subclass of :class:`~obliviate.engine.trainer.UnlearningTrainer` overriding
``compute_loss``. Every module in this package is imported on start-up, so adding a method
is adding a file (plus its ``configs/trainer/<Name>.yaml``).
"""

import importlib
import pkgutil

from obliviate.registry import METHODS

for _mod in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    if not _mod.startswith("_") and _mod != "base":
        importlib.import_module(f"{__name__}.{_mod}")

from obliviate.methods.base import MethodContext, UnlearningMethod, make_config  # noqa: E402


def build_method(name: str, method_args: dict | None = None) -> UnlearningMethod:
    """Instantiate the registered method ``name`` with its ``method_args``."""
    cls = METHODS.get(name)
    return cls(make_config(cls.Config, method_args, METHODS.canonical(name)))


__all__ = ["METHODS", "MethodContext", "UnlearningMethod", "build_method"]
