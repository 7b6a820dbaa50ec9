"""Metrics: vision classification (UA/RA/TA/MIA/Avg. Gap/RTE); LLM metrics in tofu.py, muse.py (lm_harness.py: WMDP/MMLU)."""

from obliviate.registry import Registry

METRICS: Registry = Registry("metric")

from obliviate.metrics import classification, memorisation, mia, mia_llm, muse, retrain_free, tofu  # noqa: E402,F401  (registration)

__all__ = ["METRICS"]
