"""UNDIAL: self-distillation towards reference logits with the answer token pushed down.

Loss::

    γ · mean_b mean_{t ∈ answer(b)} CE(softmax(z_ref,t − β·onehot(y_t)), p_θ,t) + α · L_r

The target distribution is the frozen reference's next-token distribution with the logit of
the true answer token lowered by β (Dong et al., 2024); the student matches it with a soft-label
cross-entropy. Only answer tokens count: prompt and padding positions never enter the loss and
a ``-100`` label is never used as a vocabulary index (both were bugs of a reference
implementation). The loss is a descent objective, so it stays bounded.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from obliviate.methods import METHODS
from obliviate.methods._common import RETAIN_LOSS_TYPES, check_choice, check_positive, retain_loss
from obliviate.methods._losses import sequence_mean, soft_cross_entropy, undial_targets
from obliviate.methods.base import UnlearningMethod


@dataclass
class UNDIALConfig:
    """Arguments of UNDIAL.

    Attributes:
        beta: Strength β subtracted from the reference logit of each answer token.
        gamma: Weight of the distillation (forget) term.
        alpha: Weight of the retain term.
        retain_loss_type: "NLL" or "KL".
    """

    beta: float = 10.0
    gamma: float = 1.0
    alpha: float = 1.0
    retain_loss_type: str = "NLL"


@METHODS.register("UNDIAL", tracks=("llm",))
class UNDIAL(UnlearningMethod):
    """Distil from adjusted reference logits on forget answer tokens."""

    Config = UNDIALConfig
    needs_reference = True

    def __init__(self, config: UNDIALConfig | None = None) -> None:
        super().__init__(config)
        check_positive("UNDIAL", "beta", self.cfg.beta, allow_zero=True)
        check_choice("UNDIAL", "retain_loss_type", self.cfg.retain_loss_type, RETAIN_LOSS_TYPES)

    def loss(self, model, batch, ctx):
        forget = batch["forget"]
        target = forget["labels"][:, 1:]  # [b, t]
        with torch.no_grad():
            ref_logits = ctx.adapter.logits(ctx.ref_model, forget)[:, :-1, :]  # [b, t, v]
            soft = undial_targets(ref_logits, target, self.cfg.beta)
        _, mask, logits = ctx.adapter.token_logprobs(model, forget)  # logits [b, t, v]
        f_loss = sequence_mean(soft_cross_entropy(logits, soft.to(logits.device)), mask).mean()
        r_loss = retain_loss(model, batch, ctx, self.cfg.retain_loss_type)
        loss = self.cfg.gamma * f_loss + self.cfg.alpha * r_loss
        return loss, {"forget_loss": f_loss.item(), "retain_loss": r_loss.item()}
