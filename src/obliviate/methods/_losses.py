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


# ----------------------------------------------------------------------------- token-level losses
# Shapes: ``[b, t]`` per-token values over the shifted sequence (t = s - 1), ``mask [b, t]``
# true on answer tokens only, ``logits [b, t, v]``. Every function below ignores masked
# positions completely (their values may be anything, including garbage from a ``-100``).


def sequence_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-sequence mean of ``values [b, t]`` over ``mask [b, t]`` -> ``[b]`` (0 for empty rows)."""
    mask = mask.to(values.dtype)
    return (values * mask).sum(-1) / mask.sum(-1).clamp_min(1.0)


def reduce_tokens(values: torch.Tensor, mask: torch.Tensor, reduction: str = "token") -> torch.Tensor:
    """Mean of per-token ``values [b, t]`` over ``mask``: over all masked tokens of the batch
    (``"token"``) or per sequence, then over the batch (``"sequence"``)."""
    if reduction == "token":
        return masked_mean(values, mask)
    return sequence_mean(values, mask).mean()


def reweighted_ascent_loss(logp: torch.Tensor, mask: torch.Tensor, weights: torch.Tensor, reduction: str = "token") -> torch.Tensor:
    """``−mean w_t · NLL_t`` with detached per-token weights (WGA, SatImp).

    Args:
        logp: Per-token answer log-probs ``[b, t]``.
        mask: Answer-token mask ``[b, t]``.
        weights: Per-token weights ``[b, t]`` (detached here: they scale the gradient only).
        reduction: "token" (mean over every answer token of the batch, the reference
            framework's) or "sequence" (per-sequence means, then the batch mean).

    Returns:
        The scalar loss (to be minimised; it ascends the weighted forget NLL).
    """
    return -reduce_tokens(weights.detach() * -logp, mask, reduction)


def wga_weights(logp: torch.Tensor, beta: float) -> torch.Tensor:
    """WGA token weights ``p_t^β`` (``p_t`` = probability of the answer token), detached."""
    return torch.exp(beta * logp.detach())


def satimp_weights(logp: torch.Tensor, beta1: float, beta2: float) -> torch.Tensor:
    """SatImp token weights ``p_t^β1 · (1 − p_t)^β2``, detached."""
    p = logp.detach().exp()
    return p.pow(beta1) * (1.0 - p).clamp_min(0.0).pow(beta2)


def soft_cross_entropy(logits: torch.Tensor, target_probs: torch.Tensor) -> torch.Tensor:
    """``−Σ_v q_v · log softmax(logits)_v`` along the last axis (``q`` = ``target_probs``)."""
    return -(target_probs * torch.log_softmax(logits.float(), dim=-1)).sum(-1)


def undial_targets(ref_logits: torch.Tensor, target: torch.Tensor, beta: float) -> torch.Tensor:
    """UNDIAL soft labels ``softmax(z_ref − β·onehot(y))`` ``[b, t, v]``, no gradient.

    ``target`` may hold ``-100`` at masked positions: it is clamped before indexing, and the
    caller masks those positions out (a ``-100`` is never used as a vocabulary index).
    """
    onehot = torch.zeros_like(ref_logits, dtype=torch.float32).scatter_(-1, target.clamp_min(0).unsqueeze(-1), 1.0)
    return torch.softmax(ref_logits.detach().float() - beta * onehot, dim=-1)


def ceu_targets(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """CE-U soft labels: ``softmax(z)`` with the answer token's logit set to −∞, no gradient."""
    z = logits.detach().float().scatter(-1, target.clamp_min(0).unsqueeze(-1), float("-inf"))
    return torch.softmax(z, dim=-1)


def activation_mse(hidden: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """RMU distance: mean over the hidden dim of ``(h − target)²``, averaged per sequence over
    ``mask`` tokens, then over the batch.

    Args:
        hidden: Activations ``[b, s, d]``.
        target: ``[b, s, d]`` or broadcastable (e.g. the control vector ``c·u`` of shape ``[d]``).
        mask: Tokens that count ``[b, s]``.
    """
    sq = (hidden.float() - target.float()).pow(2).mean(-1)  # [b, s]
    return sequence_mean(sq, mask).mean()
