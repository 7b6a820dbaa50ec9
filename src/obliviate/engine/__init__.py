"""The training engine (``UnlearningTrainer``) and its helpers."""

from obliviate.engine.trainer import SupervisedTrainer, UnlearningTrainer, frozen_copy

__all__ = ["SupervisedTrainer", "UnlearningTrainer", "frozen_copy"]
