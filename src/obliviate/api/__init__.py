"""The seed-004 Python API (re-exported by :mod:`obliviate.vision`)."""

from obliviate.api.evaluator import ImageNetEvaluator
from obliviate.api.logging import RunLogger
from obliviate.api.parquet_data import ImageNetDataManager
from obliviate.api.unlearner import Unlearner, UnlearnerConfig

__all__ = ["ImageNetDataManager", "ImageNetEvaluator", "RunLogger", "Unlearner", "UnlearnerConfig"]
