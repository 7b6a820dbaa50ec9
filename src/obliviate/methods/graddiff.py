"""GradDiff: ``−γ·NLL_f + α·L_r``, ``L_r`` = retain NLL or a KL to the reference on retain.

With the default ``reduction="token"`` both NLLs are token means over the batch's answer
tokens (HF's ``outputs.loss``) and the KL retain term is KL(p_ref || p_θ) over every
non-padding retain position, as the reference framework's ``GradDiff``;
``reduction="sequence"`` uses per-sequence means and KL(p_θ || p_ref) on answer tokens
(see :mod:`obliviate.methods._common`).
"""

from __future__ import annotations

from dataclasses import dataclass

from obliviate.methods import METHODS
from obliviate.methods._common import RETAIN_LOSS_TYPES, check_choice, check_reduction, nll_term, retain_loss
from obliviate.methods.base import UnlearningMethod


@dataclass
class GradDiffConfig:
    """Arguments of GradDiff.

    Attributes:
        gamma: Weight of the forget (ascent) term.
        alpha: Weight of the retain term.
        retain_loss_type: "NLL" (retain cross-entropy) or "KL" (divergence from the frozen
            reference on retain samples; builds a reference model).
        reduction: "token" (means over all answer tokens of the batch; KL(p_ref || p_θ) over
            non-padding positions: the reference framework's) or "sequence" (per-sequence
            means; KL(p_θ || p_ref) on answer tokens).
    """

    gamma: float = 1.0
    alpha: float = 1.0
    retain_loss_type: str = "NLL"
    reduction: str = "token"


@METHODS.register("GradDiff", tracks=("vision", "llm"))
class GradDiff(UnlearningMethod):
    """Gradient difference: ascend on forget, descend on retain."""

    Config = GradDiffConfig

    def __init__(self, config: GradDiffConfig | None = None) -> None:
        super().__init__(config)
        check_choice("GradDiff", "retain_loss_type", self.cfg.retain_loss_type, RETAIN_LOSS_TYPES)
        check_reduction("GradDiff", self.cfg.reduction)
        self.needs_reference = self.cfg.retain_loss_type == "KL"

    def loss(self, model, batch, ctx):
        forget_loss = nll_term(model, batch["forget"], ctx, self.cfg.reduction)
        r_loss = retain_loss(model, batch, ctx, self.cfg.retain_loss_type, self.cfg.reduction)
        loss = -self.cfg.gamma * forget_loss + self.cfg.alpha * r_loss
        return loss, {"forget_loss": forget_loss.item(), "retain_loss": r_loss.item()}
