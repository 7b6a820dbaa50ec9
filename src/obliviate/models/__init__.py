"""Models: vision classifiers (small CNN, CIFAR ResNet, any timm model) and HF causal LMs."""

from obliviate.registry import MODELS

from obliviate.models import llm, vision  # noqa: E402,F401  (registration)
from obliviate.models.vision import build_vision_model  # noqa: E402

__all__ = ["MODELS", "build_vision_model"]
