"""GradDiff: ``−γ·NLL_f + α·L_r``, ``L_r`` = retain NLL or KL(p_θ || p_ref) on retain."""

from __future__ import annotations

from dataclasses import dataclass

from obliviate.errors import ConfigError
from obliviate.methods import METHODS
from obliviate.methods.base import UnlearningMethod


@dataclass
class GradDiffConfig:
    """Arguments of GradDiff.

    Attributes:
        gamma: Weight of the forget (ascent) term.
        alpha: Weight of the retain term.
        retain_loss_type: "NLL" (retain cross-entropy) or "KL" (divergence from the frozen
            reference on retain samples; builds a reference model).
    """

    gamma: float = 1.0
    alpha: float = 1.0
    retain_loss_type: str = "NLL"


@METHODS.register("GradDiff", tracks=("vision", "llm"))
class GradDiff(UnlearningMethod):
    """Gradient difference: ascend on forget, descend on retain."""

    Config = GradDiffConfig

    def __init__(self, config: GradDiffConfig | None = None) -> None:
        super().__init__(config)
        if self.cfg.retain_loss_type not in ("NLL", "KL"):
            raise ConfigError(f"GradDiff retain_loss_type must be 'NLL' or 'KL', got '{self.cfg.retain_loss_type}'")
        self.needs_reference = self.cfg.retain_loss_type == "KL"

    def loss(self, model, batch, ctx):
        f_nll, _ = ctx.adapter.per_sample_nll(model, batch["forget"])
        forget_loss = f_nll.mean()
        if self.cfg.retain_loss_type == "KL":
            retain_loss = ctx.adapter.per_sample_kl(model, ctx.ref_model, batch["retain"]).mean()
        else:
            retain_loss = ctx.adapter.per_sample_nll(model, batch["retain"])[0].mean()
        loss = -self.cfg.gamma * forget_loss + self.cfg.alpha * retain_loss
        return loss, {"forget_loss": forget_loss.item(), "retain_loss": retain_loss.item()}
