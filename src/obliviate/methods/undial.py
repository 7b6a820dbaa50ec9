"""UNDIAL: self-distillation towards reference logits with the answer token pushed down.

Loss::

    γ · mean_{t ∈ answer tokens} CE(softmax(z_ref,t − β·onehot(y_t)), p_θ,t) + α · L_r

The target distribution is the frozen reference's next-token distribution with the logit of
the true answer token lowered by β (Dong et al., 2024); the student matches it with a soft-label
cross-entropy. The mean runs over every answer token of the batch (``reduction="token"``) or
per sequence first (``"sequence"``). Defaults are the reference framework's ``UNDIAL.yaml``:
β = 10, γ = 1 and α = 0 (no retain term, so no retain data is paired; set α > 0 to add one).

Differences from the reference framework's ``compute_undial_loss`` (bugs not copied): it
averages over *every* position of the batch, prompt and padding included, and builds the
one-hot of a ``-100`` label by indexing the vocabulary with ``-100`` (the 100th-last token).
Here only answer tokens count and a ``-100`` label is never used as an index. On a batch
without prompt or padding tokens the two agree. The loss is a descent objective, so it stays
bounded.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from obliviate.methods import METHODS
from obliviate.methods._common import RETAIN_LOSS_TYPES, check_choice, check_positive, check_reduction, retain_loss
from obliviate.methods._losses import reduce_tokens, soft_cross_entropy, undial_targets
from obliviate.methods.base import UnlearningMethod


@dataclass
class UNDIALConfig:
    """Arguments of UNDIAL.

    Attributes:
        beta: Strength β subtracted from the reference logit of each answer token.
        gamma: Weight of the distillation (forget) term.
        alpha: Weight of the retain term (0 = no retain term and no retain data).
        retain_loss_type: "NLL" or "KL".
        reduction: "token" (means over all answer tokens of the batch) or "sequence"
            (per-sequence means, then the batch mean).
    """

    beta: float = 10.0
    gamma: float = 1.0
    alpha: float = 0.0
    retain_loss_type: str = "NLL"
    reduction: str = "token"


@METHODS.register("UNDIAL", tracks=("llm",))
class UNDIAL(UnlearningMethod):
    """Distil from adjusted reference logits on forget answer tokens."""

    Config = UNDIALConfig
    needs_reference = True

    def __init__(self, config: UNDIALConfig | None = None) -> None:
        super().__init__(config)
        check_positive("UNDIAL", "beta", self.cfg.beta, allow_zero=True)
        check_positive("UNDIAL", "alpha", self.cfg.alpha, allow_zero=True)
        check_choice("UNDIAL", "retain_loss_type", self.cfg.retain_loss_type, RETAIN_LOSS_TYPES)
        check_reduction("UNDIAL", self.cfg.reduction)
        self.needs_retain = self.cfg.alpha > 0

    def loss(self, model, batch, ctx):
        forget = batch["forget"]
        target = forget["labels"][:, 1:]  # [b, t]
        with torch.no_grad():
            ref_logits = ctx.adapter.logits(ctx.ref_model, forget)[:, :-1, :]  # [b, t, v]
            soft = undial_targets(ref_logits, target, self.cfg.beta)
        _, mask, logits = ctx.adapter.token_logprobs(model, forget)  # logits [b, t, v]
        f_loss = reduce_tokens(soft_cross_entropy(logits, soft.to(logits.device)), mask, self.cfg.reduction)
        loss = self.cfg.gamma * f_loss
        logs = {"forget_loss": f_loss.item()}
        if self.needs_retain:
            r_loss = retain_loss(model, batch, ctx, self.cfg.retain_loss_type, self.cfg.reduction)
            loss = loss + self.cfg.alpha * r_loss
            logs["retain_loss"] = r_loss.item()
        return loss, logs
