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

    def per_sample_logprob(self, model: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        """log p(label | image) per sample ``[b]`` (= −CE)."""
        return -self.per_sample_nll(model, batch)[0]

    def per_sample_kl(self, model: nn.Module, ref_model: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        """KL(p_model || p_ref) per sample ``[b]`` (the reference runs without gradients)."""
        with torch.no_grad():
            ref_logits = self.logits(ref_model, batch)
        return kl_from_logits(self.logits(model, batch), ref_logits)

    def mean_nll(self, model: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        """Mean cross-entropy over the batch (one "token" per image: same as the per-sample mean)."""
        return self.per_sample_nll(model, batch)[0].mean()

    def reference_kl(self, model: nn.Module, ref_model: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        """Mean over the batch of KL(p_ref || p_model), the reference framework's direction."""
        with torch.no_grad():
            ref_logits = self.logits(ref_model, batch)
        return kl_from_logits(ref_logits, self.logits(model, batch)).mean()

    def random_wrong_labels(self, labels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Uniformly random labels that are never the true label (``y + U{1..C-1} mod C``)."""
        shift = torch.randint(1, self.num_classes, labels.shape, generator=generator, device="cpu").to(labels.device)
        return (labels + shift) % self.num_classes


def kl_from_logits(logits: torch.Tensor, ref_logits: torch.Tensor) -> torch.Tensor:
    """KL(p || q) along the last axis, ``p = softmax(logits)``, ``q = softmax(ref_logits)``."""
    logp = F.log_softmax(logits.float(), dim=-1)
    logq = F.log_softmax(ref_logits.float(), dim=-1)
    return (logp.exp() * (logp - logq)).sum(-1)


class CausalLMAdapter:
    """Adapter for HF causal LMs; a batch is ``{"input_ids", "attention_mask", "labels"}``.

    ``labels`` holds ``-100`` on prompt and padding tokens; only answer tokens count. A
    ``-100`` label is never used as a vocabulary index (it is clamped before ``gather``
    and masked out).
    """

    track = "llm"

    def logits(self, model: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        """Logits ``[b, s, v]``."""
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits

    @staticmethod
    def shifted(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Next-token log-probs of the labels: ``(logp [b, s-1], mask [b, s-1], logits [b, s-1, v])``."""
        logits = logits[:, :-1, :].float()  # [b, s-1, v]
        target = labels[:, 1:]  # [b, s-1]
        mask = target != -100
        logp = torch.log_softmax(logits, dim=-1).gather(-1, target.clamp_min(0).unsqueeze(-1)).squeeze(-1)
        return logp * mask, mask, logits

    def token_logprobs(self, model: nn.Module, batch: dict[str, Any], labels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-token answer log-probs ``[b, s-1]`` (0 off the answer), the answer mask, and logits."""
        logits = self.logits(model, batch)
        return self.shifted(logits, batch["labels"] if labels is None else labels)

    def per_sample_nll(self, model: nn.Module, batch: dict[str, Any], labels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean answer-token NLL per sequence ``[b]``, and the logits."""
        logp, mask, logits = self.token_logprobs(model, batch, labels)
        return -(logp.sum(-1) / mask.sum(-1).clamp_min(1)), logits

    def per_sample_logprob(self, model: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        """Summed answer log-prob ``log π(y|x)`` per sequence ``[b]``."""
        return self.token_logprobs(model, batch)[0].sum(-1)

    def mean_nll(self, model: nn.Module, batch: dict[str, Any], labels: torch.Tensor | None = None) -> torch.Tensor:
        """Token mean of the answer NLL over *all* answer tokens of the batch (a scalar).

        This is HF's ``model(**batch).loss`` (the reference framework's NLL terms): every
        answer token weighs the same, so long answers weigh more than short ones. Compare
        :meth:`per_sample_nll`, whose batch mean weighs every sequence the same.
        """
        logp, mask, _ = self.token_logprobs(model, batch, labels)
        return -logp.sum() / mask.sum().clamp_min(1)

    def reference_kl(self, model: nn.Module, ref_model: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        """KL(p_ref || p_model) averaged over every non-padding position of the batch (a scalar).

        The reference framework's retain KL (``compute_kl_divergence``: ``kl_div(log p_θ,
        log p_ref, reduction="batchmean", log_target=True)`` over all ``b·s`` positions, prompt
        included, unshifted) without its padding positions: the mean runs over the positions
        where ``attention_mask`` is 1. On a batch without padding the two are identical.
        """
        with torch.no_grad():
            ref_logits = self.logits(ref_model, batch)  # [b, s, v]
        logits = self.logits(model, batch)  # [b, s, v]
        mask = batch["attention_mask"].bool()  # [b, s]
        kl = kl_from_logits(ref_logits, logits) * mask  # KL(p_ref || p_θ) [b, s]
        return kl.sum() / mask.sum().clamp_min(1)

    def token_kl(self, model: nn.Module, ref_model: nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """KL(p_model || p_ref) of the next-token distributions that predict answer tokens:
        ``(kl [b, s-1], mask [b, s-1])``, 0 off the answer (padding/prompt excluded)."""
        with torch.no_grad():
            ref_logits = self.logits(ref_model, batch)[:, :-1, :]
        logits = self.logits(model, batch)[:, :-1, :]
        mask = batch["labels"][:, 1:] != -100
        return kl_from_logits(logits, ref_logits) * mask, mask

    def per_sample_kl(self, model: nn.Module, ref_model: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        """Mean over answer tokens of KL(p_model || p_ref) per sequence ``[b]`` (padding/prompt excluded)."""
        kl, mask = self.token_kl(model, ref_model, batch)  # [b, s-1]
        return kl.sum(-1) / mask.sum(-1).clamp_min(1)
