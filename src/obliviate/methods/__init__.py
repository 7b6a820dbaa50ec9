"""Unlearning methods: one file per method, registered by name in :data:`METHODS`.

A registry entry is either a :class:`~obliviate.methods.base.UnlearningMethod` subclass (a
loss over forget/retain batch pairs) or, for the seed-001 route, a subclass of
:class:`~obliviate.engine.trainer.UnlearningTrainer` overriding ``compute_loss``.
"""

from obliviate.registry import Registry

METHODS: Registry = Registry("method")

from obliviate.methods import ft, ga, graddiff, rl  # noqa: E402,F401  (registration)
from obliviate.methods.base import MethodContext, UnlearningMethod, make_config  # noqa: E402


def build_method(name: str, method_args: dict | None = None) -> UnlearningMethod:
    """Instantiate the registered method ``name`` with its ``method_args``."""
    cls = METHODS.get(name)
    return cls(make_config(cls.Config, method_args, METHODS.canonical(name)))


__all__ = ["METHODS", "MethodContext", "UnlearningMethod", "build_method"]
