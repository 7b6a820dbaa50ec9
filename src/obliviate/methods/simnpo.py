"""SimNPO: reference-free NPO on length-normalised forget NLL.

Loss::

    γ · (−(2/β) · mean_b logσ(β · (NLL_f(b) − δ))) + α · L_r

``NLL_f(b)`` is the mean answer-token NLL of forget sequence ``b`` (length normalisation
replaces NPO's reference model). ``γ`` weights the forget term as in the reference framework's
``SimNPO`` (``gamma``) and the SimNPO authors' code (``npo_coeff``); ``δ`` is the reward
margin (called γ in the SimNPO paper). No reference model is built.
"""

from __future__ import annotations

from dataclasses import dataclass

from obliviate.methods import METHODS
from obliviate.methods._common import check_choice, check_positive, check_reduction, retain_loss
from obliviate.methods._losses import simnpo_loss
from obliviate.methods.base import UnlearningMethod


@dataclass
class SimNPOConfig:
    """Arguments of SimNPO.

    Attributes:
        beta: Inverse temperature β.
        delta: Reward margin δ subtracted from the forget NLL.
        gamma: Weight of the SimNPO forget term.
        alpha: Weight of the retain NLL.
        retain_loss_type: "NLL" only (SimNPO is reference-free).
        reduction: Of the retain NLL: "token" (over all answer tokens of the batch, as the
            reference framework) or "sequence" (per-sequence means). The forget term is a
            per-sequence mean NLL either way (length normalisation is SimNPO's point).
    """

    beta: float = 4.5
    delta: float = 0.0
    gamma: float = 0.125
    alpha: float = 1.0
    retain_loss_type: str = "NLL"
    reduction: str = "token"


@METHODS.register("SimNPO", tracks=("llm",))
class SimNPO(UnlearningMethod):
    """SimNPO: ``−(2/β)·logσ(β·(NLL_f − δ))`` per sequence, weighted by γ, + α·NLL_r."""

    Config = SimNPOConfig

    def __init__(self, config: SimNPOConfig | None = None) -> None:
        super().__init__(config)
        check_positive("SimNPO", "beta", self.cfg.beta)
        check_choice("SimNPO", "retain_loss_type", self.cfg.retain_loss_type, ("NLL",))
        check_reduction("SimNPO", self.cfg.reduction)

    def loss(self, model, batch, ctx):
        nll_f, _ = ctx.adapter.per_sample_nll(model, batch["forget"])  # [b]
        f_loss = simnpo_loss(nll_f, self.cfg.beta, self.cfg.delta)
        r_loss = retain_loss(model, batch, ctx, "NLL", self.cfg.reduction)
        loss = self.cfg.gamma * f_loss + self.cfg.alpha * r_loss
        return loss, {"forget_loss": f_loss.item(), "forget_nll": nll_f.mean().item(), "retain_loss": r_loss.item()}
