"""The training engine (``UnlearningTrainer``) and its helpers."""

# Methods first: a method module may subclass UnlearningTrainer (seed-001 route) and import
# ``obliviate.engine.trainer`` while ``obliviate.methods`` auto-imports it; loading the methods
# package before the trainer module makes that import order work from either side.
import obliviate.methods  # noqa: F401  isort: skip
from obliviate.engine.trainer import SupervisedTrainer, UnlearningTrainer, build_trainer, frozen_copy

__all__ = ["SupervisedTrainer", "UnlearningTrainer", "build_trainer", "frozen_copy"]
