"""RL (random labelling): CE towards random *wrong* labels on forget + CE on retain."""

from __future__ import annotations

from dataclasses import dataclass

from obliviate.registry import METHODS
from obliviate.methods.base import UnlearningMethod


@dataclass
class RLConfig:
    """Arguments of RL.

    Attributes:
        alpha: Weight of the retain cross-entropy.
    """

    alpha: float = 1.0


@METHODS.register("RL", tracks=("vision",))
class RandomLabel(UnlearningMethod):
    """Random labels are drawn fresh every step and never equal the true label."""

    Config = RLConfig

    def loss(self, model, batch, ctx):
        forget = batch["forget"]
        wrong = ctx.adapter.random_wrong_labels(forget["labels"], ctx.generator)
        f_nll, _ = ctx.adapter.per_sample_nll(model, forget, labels=wrong)
        retain_loss = ctx.adapter.per_sample_nll(model, batch["retain"])[0].mean()
        loss = f_nll.mean() + self.cfg.alpha * retain_loss
        return loss, {"forget_rl_loss": f_nll.mean().item(), "retain_loss": retain_loss.item()}
