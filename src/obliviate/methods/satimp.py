"""SatImp: gradient ascent with saturation × importance token weights.

Loss::

    −γ · mean_{t ∈ answer tokens} p_t^β1 · (1 − p_t)^β2 · NLL_t + α · L_r

``p_t`` = the model's (detached) probability of answer token ``t`` (Yang et al., 2025,
"Exploring criteria of loss reweighting to enhance LLM unlearning"): ``p^β1`` down-weights
tokens already forgotten (saturation), ``(1−p)^β2`` up-weights tokens not yet fully learned
(importance). Defaults are the reference framework's ``SatImp.yaml``: β1 = 5, β2 = 1, forget
weight γ = 0.1 and retain weight α = 1 (the token weights are at most 5⁵/6⁶ ≈ 0.067 anyway);
the mean runs over every answer token of the batch (``reduction="token"``, its
``compute_satimp_loss``) unless ``reduction="sequence"``.
"""

from __future__ import annotations

from dataclasses import dataclass

from obliviate.methods import METHODS
from obliviate.methods._common import RETAIN_LOSS_TYPES, check_choice, check_positive, check_reduction, retain_loss
from obliviate.methods._losses import reweighted_ascent_loss, satimp_weights
from obliviate.methods.base import UnlearningMethod


@dataclass
class SatImpConfig:
    """Arguments of SatImp.

    Attributes:
        beta1: Saturation exponent β1 (weight ``p_t^β1``).
        beta2: Importance exponent β2 (weight ``(1 − p_t)^β2``).
        gamma: Weight of the forget term.
        alpha: Weight of the retain term.
        retain_loss_type: "NLL" or "KL" (KL builds a reference model).
        reduction: "token" (means over all answer tokens of the batch, as the reference
            framework) or "sequence" (per-sequence means, then the batch mean).
    """

    beta1: float = 5.0
    beta2: float = 1.0
    gamma: float = 0.1
    alpha: float = 1.0
    retain_loss_type: str = "NLL"
    reduction: str = "token"


@METHODS.register("SatImp", tracks=("llm",))
class SatImp(UnlearningMethod):
    """Token-reweighted gradient ascent (saturation and importance weights)."""

    Config = SatImpConfig

    def __init__(self, config: SatImpConfig | None = None) -> None:
        super().__init__(config)
        check_positive("SatImp", "beta1", self.cfg.beta1, allow_zero=True)
        check_positive("SatImp", "beta2", self.cfg.beta2, allow_zero=True)
        check_choice("SatImp", "retain_loss_type", self.cfg.retain_loss_type, RETAIN_LOSS_TYPES)
        check_reduction("SatImp", self.cfg.reduction)
        self.needs_reference = self.cfg.retain_loss_type == "KL"

    def loss(self, model, batch, ctx):
        logp, mask, _ = ctx.adapter.token_logprobs(model, batch["forget"])  # [b, t]
        weights = satimp_weights(logp, self.cfg.beta1, self.cfg.beta2)
        f_loss = reweighted_ascent_loss(logp, mask, weights, self.cfg.reduction)
        r_loss = retain_loss(model, batch, ctx, self.cfg.retain_loss_type, self.cfg.reduction)
        loss = self.cfg.gamma * f_loss + self.cfg.alpha * r_loss
        return loss, {"forget_loss": f_loss.item(), "retain_loss": r_loss.item()}
