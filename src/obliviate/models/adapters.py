"""Model adapters: the only code that knows how a batch becomes per-sample losses.

Methods are written once against this interface, so the same loss works for image
classifiers (cross-entropy over labels) and causal LMs (token NLL over answer tokens).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


class ClassifierAdapter:
    """Adapter for image classifiers; a batch is ``{"pixel_values", "labels", "index"}``."""

    track = "vision"

    def __init__(self, num_classes: int) -> None:
        self.num_classes = int(num_classes)

    def logits(self, model: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        """Logits ``[b, num_classes]``."""
        return model(batch["pixel_values"])

    def per_sample_nll(
        self, model: nn.Module, batch: dict[str, Any], labels: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-sample cross-entropy ``[b]`` (against ``labels`` or the batch's labels) and logits."""
        logits = self.logits(model, batch)
        target = batch["labels"] if labels is None else labels
        return F.cross_entropy(logits, target, reduction="none"), logits

    def per_sample_kl(self, model: nn.Module, ref_model: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        """KL(p_model || p_ref) per sample ``[b]`` (the reference runs without gradients)."""
        with torch.no_grad():
            ref_logits = self.logits(ref_model, batch)
        return kl_from_logits(self.logits(model, batch), ref_logits)

    def random_wrong_labels(self, labels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Uniformly random labels that are never the true label (``y + U{1..C-1} mod C``)."""
        shift = torch.randint(1, self.num_classes, labels.shape, generator=generator, device="cpu").to(labels.device)
        return (labels + shift) % self.num_classes


def kl_from_logits(logits: torch.Tensor, ref_logits: torch.Tensor) -> torch.Tensor:
    """KL(p || q) along the last axis, ``p = softmax(logits)``, ``q = softmax(ref_logits)``."""
    logp = F.log_softmax(logits.float(), dim=-1)
    logq = F.log_softmax(ref_logits.float(), dim=-1)
    return (logp.exp() * (logp - logq)).sum(-1)
