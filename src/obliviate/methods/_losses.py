"""Pure tensor functions shared by the method losses (no models, no batches)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def masked_mean(values: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean of ``values`` over positions where ``mask`` is true (all if ``mask`` is None)."""
    if mask is None:
        return values.mean()
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp_min(1.0)


def npo_loss(logp: torch.Tensor, logp_ref: torch.Tensor, beta: float) -> torch.Tensor:
    """NPO: ``(2/β)·mean softplus(β·(logπ_θ − logπ_ref))`` over per-sequence log-probs ``[b]``."""
    return (2.0 / beta) * F.softplus(beta * (logp - logp_ref)).mean()


def simnpo_loss(nll: torch.Tensor, beta: float, delta: float) -> torch.Tensor:
    """SimNPO: ``−(2/β)·mean logσ(β·(NLL − δ))`` over per-sequence mean NLLs ``[b]``."""
    return -(2.0 / beta) * F.logsigmoid(beta * (nll - delta)).mean()


def dpo_loss(logp_w: torch.Tensor, logp_w_ref: torch.Tensor, logp_l: torch.Tensor, logp_l_ref: torch.Tensor, beta: float) -> torch.Tensor:
    """DPO: ``−(2/β)·mean logσ(β[(logπ(w)−logπ_ref(w)) − (logπ(l)−logπ_ref(l))])``."""
    margin = (logp_w - logp_w_ref) - (logp_l - logp_l_ref)
    return -(2.0 / beta) * F.logsigmoid(beta * margin).mean()
