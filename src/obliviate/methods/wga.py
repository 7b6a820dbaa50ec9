"""WGA (weighted gradient ascent): ascend the forget NLL with per-token weights ``p_t^β``.

Loss::

    −γ · mean_{t ∈ answer tokens} p_t^β · NLL_t + α · L_r

``p_t`` = the model's (detached) probability of answer token ``t``: tokens the model already
got wrong stop driving the ascent, which keeps it from diverging (Wang et al., 2025, "Rethinking
LLM unlearning objectives"). With the default ``reduction="token"`` the mean runs over every
answer token of the batch, as the reference framework's ``compute_wga_loss``;
``reduction="sequence"`` takes per-sequence means first. With β = 0 this is exactly
GradDiff/GA with the same reduction.
"""

from __future__ import annotations

from dataclasses import dataclass

from obliviate.methods import METHODS
from obliviate.methods._common import RETAIN_LOSS_TYPES, check_choice, check_positive, check_reduction, retain_loss
from obliviate.methods._losses import reweighted_ascent_loss, wga_weights
from obliviate.methods.base import UnlearningMethod


@dataclass
class WGAConfig:
    """Arguments of WGA.

    Attributes:
        beta: Exponent β of the token weight ``p_t^β``.
        gamma: Weight of the forget term.
        alpha: Weight of the retain term.
        retain_loss_type: "NLL" or "KL" (KL builds a reference model).
        reduction: "token" (means over all answer tokens of the batch, as the reference
            framework) or "sequence" (per-sequence means, then the batch mean).
    """

    beta: float = 1.0
    gamma: float = 1.0
    alpha: float = 1.0
    retain_loss_type: str = "NLL"
    reduction: str = "token"


@METHODS.register("WGA", tracks=("llm",))
class WGA(UnlearningMethod):
    """Gradient ascent with detached confidence weights per answer token."""

    Config = WGAConfig

    def __init__(self, config: WGAConfig | None = None) -> None:
        super().__init__(config)
        check_positive("WGA", "beta", self.cfg.beta, allow_zero=True)
        check_choice("WGA", "retain_loss_type", self.cfg.retain_loss_type, RETAIN_LOSS_TYPES)
        check_reduction("WGA", self.cfg.reduction)
        self.needs_reference = self.cfg.retain_loss_type == "KL"

    def loss(self, model, batch, ctx):
        logp, mask, _ = ctx.adapter.token_logprobs(model, batch["forget"])  # [b, t]
        f_loss = reweighted_ascent_loss(logp, mask, wga_weights(logp, self.cfg.beta), self.cfg.reduction)
        r_loss = retain_loss(model, batch, ctx, self.cfg.retain_loss_type, self.cfg.reduction)
        loss = self.cfg.gamma * f_loss + self.cfg.alpha * r_loss
        return loss, {"forget_loss": f_loss.item(), "retain_loss": r_loss.item()}
