"""Metrics: vision classification (UA/RA/TA/MIA/Avg. Gap/RTE); LLM metrics live in tofu.py."""

from obliviate.registry import Registry

METRICS: Registry = Registry("metric")

from obliviate.metrics import classification, memorisation, mia, mia_llm, retrain_free, tofu  # noqa: E402,F401  (registration)

__all__ = ["METRICS"]
