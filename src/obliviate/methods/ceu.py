"""CE-U (cross-entropy unlearning): cross-entropy towards the model's own distribution with the
answer token removed.

Loss::

    γ · mean_{t ∈ answer tokens, t ≥ n} CE(q_t, p_θ,t) + α · L_r,   q_t = softmax(z_t with z_t[y_t] = −∞)

``q_t`` is detached. The gradient w.r.t. the logits is ``p_θ,t − q_t``: it lowers the answer
token's probability and renormalises the rest, and (unlike gradient ascent) vanishes as
``p(y_t) → 0``, so the loss is bounded (Yang, 2025, "CE-U: cross entropy unlearning"). The first
``ignore_first_n_answer_tokens`` answer tokens of each sequence are skipped (as in the reference
framework). The mean runs over every remaining answer token of the batch (``reduction="token"``,
the reference framework's ``F.cross_entropy`` mean) or per sequence first (``"sequence"``).
The reference has no retain term; here it is off by default (α = 0), so no retain data is
paired then.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from obliviate.methods import METHODS
from obliviate.methods._common import RETAIN_LOSS_TYPES, check_choice, check_positive, check_reduction, retain_loss
from obliviate.methods._losses import ceu_targets, reduce_tokens, soft_cross_entropy
from obliviate.methods.base import UnlearningMethod


@dataclass
class CEUConfig:
    """Arguments of CEU.

    Attributes:
        ignore_first_n_answer_tokens: Answer tokens at the start of each answer left out.
        gamma: Weight of the CE-U forget term.
        alpha: Weight of the retain term (0 = no retain data).
        retain_loss_type: "NLL" or "KL".
        reduction: "token" (means over all answer tokens of the batch, as the reference
            framework) or "sequence" (per-sequence means, then the batch mean).
    """

    ignore_first_n_answer_tokens: int = 1
    gamma: float = 1.0
    alpha: float = 0.0
    retain_loss_type: str = "NLL"
    reduction: str = "token"


def drop_first_answer_tokens(mask: torch.Tensor, n: int) -> torch.Tensor:
    """``mask [b, t]`` without the first ``n`` true positions of each row."""
    if n <= 0:
        return mask
    return mask & (mask.long().cumsum(-1) > n)


@METHODS.register("CEU", aliases=("CE-U",), tracks=("llm",))
class CEU(UnlearningMethod):
    """Soft-label cross-entropy towards "anything but the answer token"."""

    Config = CEUConfig

    def __init__(self, config: CEUConfig | None = None) -> None:
        super().__init__(config)
        check_positive("CEU", "ignore_first_n_answer_tokens", self.cfg.ignore_first_n_answer_tokens, allow_zero=True)
        check_positive("CEU", "alpha", self.cfg.alpha, allow_zero=True)
        check_choice("CEU", "retain_loss_type", self.cfg.retain_loss_type, RETAIN_LOSS_TYPES)
        check_reduction("CEU", self.cfg.reduction)
        self.needs_retain = self.cfg.alpha > 0
        self.needs_reference = self.needs_retain and self.cfg.retain_loss_type == "KL"

    def loss(self, model, batch, ctx):
        forget = batch["forget"]
        _, mask, logits = ctx.adapter.token_logprobs(model, forget)  # logits [b, t, v]
        mask = drop_first_answer_tokens(mask, int(self.cfg.ignore_first_n_answer_tokens))
        q = ceu_targets(logits, forget["labels"][:, 1:])  # [b, t, v]
        f_loss = reduce_tokens(soft_cross_entropy(logits, q), mask, self.cfg.reduction)
        loss = self.cfg.gamma * f_loss
        logs = {"forget_loss": f_loss.item()}
        if self.needs_retain:
            r_loss = retain_loss(model, batch, ctx, self.cfg.retain_loss_type, self.cfg.reduction)
            loss = loss + self.cfg.alpha * r_loss
            logs["retain_loss"] = r_loss.item()
        return loss, logs
