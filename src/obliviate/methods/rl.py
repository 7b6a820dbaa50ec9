"""RL (random labelling): CE towards random *wrong* labels on forget + CE on retain.

As the reference (Unlearn-Saliency ``unlearn/RL.py``, CIFAR-10 branch) each epoch is a full
pass over the forget set -- every batch trained towards fresh random labels -- followed by
a full pass over the retain set with the true labels (``pairing="passes"``; the data side is
:class:`~obliviate.data.pairing.ForgetRetainDataset` with ``anchor="passes"``). Each
optimizer step sees one side only::

    forget batch:  mean CE(f(x), ỹ),  ỹ ~ U({0..C-1} \\ {y})
    retain batch:  alpha · mean CE(f(x), y)

``pairing="joint"`` takes joint steps instead (``CE_forget(ỹ) + alpha · CE_retain`` on a
forget batch and a sampled retain batch, the epoch anchored on the forget set), which sees
about n_f/n_r of the retain set per epoch.

Unlike the reference, whose ``torch.randint`` labels equal the true label 1/C of the time
(DESIGN.md §9), the random labels here are always wrong.
"""

from __future__ import annotations

from dataclasses import dataclass

from obliviate.errors import ConfigError
from obliviate.registry import METHODS
from obliviate.methods.base import UnlearningMethod

PAIRINGS = ("passes", "joint")


@dataclass
class RLConfig:
    """Arguments of RL.

    Attributes:
        alpha: Weight of the retain cross-entropy.
        pairing: "passes" (the reference: a forget pass, then a retain pass, per epoch) or
            "joint" (forget and sampled retain batches in one step, epoch = one forget pass).
    """

    alpha: float = 1.0
    pairing: str = "passes"


def random_label_loss(model, batch, ctx, alpha: float) -> tuple:
    """The RL loss of one batch: forget-only, retain-only (passes) or both (joint)."""
    logs, loss = {}, 0.0
    if "forget" in batch:
        forget = batch["forget"]
        wrong = ctx.adapter.random_wrong_labels(forget["labels"], ctx.generator)
        f_loss = ctx.adapter.per_sample_nll(model, forget, labels=wrong)[0].mean()
        loss, logs["forget_rl_loss"] = f_loss, f_loss.item()
    if "retain" in batch:
        r_loss = ctx.adapter.per_sample_nll(model, batch["retain"])[0].mean()
        loss, logs["retain_loss"] = loss + alpha * r_loss, r_loss.item()
    return loss, logs


@METHODS.register("RL", tracks=("vision",))
class RandomLabel(UnlearningMethod):
    """Random labels are drawn fresh every step and never equal the true label."""

    Config = RLConfig

    def __init__(self, config: RLConfig | None = None) -> None:
        super().__init__(config)
        if self.cfg.pairing not in PAIRINGS:
            raise ConfigError(f"RL pairing must be one of {', '.join(PAIRINGS)}, got '{self.cfg.pairing}'")
        self.anchor = "passes" if self.cfg.pairing == "passes" else "forget"

    def loss(self, model, batch, ctx):
        return random_label_loss(model, batch, ctx, self.cfg.alpha)
