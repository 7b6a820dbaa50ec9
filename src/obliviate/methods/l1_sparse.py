"""l1_sparse: fine-tuning on the retain set with a decaying ℓ1 penalty (Jia et al. 2023).

Loss in epoch e (0-based) of E::

    CE_retain + α_e · ||θ||₁,     α_e = α · (1 − e / (E − no_l1_epochs))   for e < E − no_l1_epochs
                                  α_e = 0                                  afterwards

as the reference ``unlearn/FT.py`` (``FT_iter(..., with_l1=True)``, run by ``FT_prune``): the
penalty is constant within an epoch, starts at α and decays linearly, the last epoch using
α/E (with ``no_l1_epochs=0``). ``||θ||₁`` sums the absolute values of all trainable
parameters (the reference's ``l1_regularization`` over ``model.parameters()``). E is the
trainer's ``num_train_epochs``, read when training begins (the method exposes a
``TrainerCallback`` through ``callbacks(ctx)``). ``schedule="linear_step"`` decays per
optimizer step instead (``α·(1 − t/T)``, T = the trainer's ``max_steps``);
``schedule="constant"`` keeps α fixed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from transformers import TrainerCallback

from obliviate.errors import ConfigError
from obliviate.registry import METHODS
from obliviate.methods.base import UnlearningMethod

SCHEDULES = ("linear", "linear_step", "constant")


@dataclass
class L1SparseConfig:
    """Arguments of l1_sparse.

    Attributes:
        alpha: Initial weight α of the ℓ1 penalty.
        schedule: "linear" (the reference: per epoch, α·(1 − e/(E − no_l1_epochs))),
            "linear_step" (per optimizer step, α·(1 − t/T)) or "constant".
        no_l1_epochs: Final epochs without the penalty (the reference's ``--no-l1-epochs``).
    """

    alpha: float = 5e-4
    schedule: str = "linear"
    no_l1_epochs: int = 0


def l1_weight(alpha: float, step: int, total: int | None, schedule: str = "linear", no_l1: int = 0) -> float:
    """α at epoch ``step`` of ``total`` epochs ("linear") or at optimizer step ``step`` of
    ``total`` steps ("linear_step"); α when ``total`` is unknown or the schedule is constant."""
    if schedule == "constant" or not total:
        return alpha
    if schedule == "linear_step":
        return alpha * max(0.0, 1.0 - step / total)
    span = total - no_l1
    if span <= 0:  # the reference: every epoch is a "no-l1" epoch -> constant alpha
        return alpha
    return alpha * (1.0 - step / span) if step < span else 0.0


def l1_norm(model: torch.nn.Module) -> torch.Tensor:
    """``Σ |θ|`` over trainable parameters."""
    return sum(p.abs().sum() for p in model.parameters() if p.requires_grad)  # type: ignore[return-value]


class _Progress(TrainerCallback):
    def __init__(self, method: "L1Sparse") -> None:
        self.method = method

    def on_train_begin(self, args, state, control, **kwargs):
        self.method.total_steps = int(state.max_steps)
        self.method.total_epochs = int(math.ceil(state.num_train_epochs)) if state.num_train_epochs else None

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.method.epoch = int(round(state.epoch or 0))


@METHODS.register("l1_sparse", tracks=("vision",))
class L1Sparse(UnlearningMethod):
    """FT on retain + α_e·||θ||₁ with α_e decaying linearly to 0 over the epochs."""

    Config = L1SparseConfig
    needs_forget = False
    anchor = "retain"

    def __init__(self, config: L1SparseConfig | None = None) -> None:
        super().__init__(config)
        if self.cfg.alpha < 0 or self.cfg.no_l1_epochs < 0:
            raise ConfigError(f"l1_sparse alpha and no_l1_epochs must be >= 0, got {self.cfg.alpha}, {self.cfg.no_l1_epochs}")
        if self.cfg.schedule not in SCHEDULES:
            raise ConfigError(f"l1_sparse schedule must be one of {', '.join(SCHEDULES)}, got '{self.cfg.schedule}'")
        self.total_steps: int | None = None
        self.total_epochs: int | None = None
        self.epoch = 0

    def callbacks(self, ctx) -> list[TrainerCallback]:
        """Reads the trainer's ``max_steps`` / epochs when training begins and the epoch as it goes."""
        return [_Progress(self)]

    def current_weight(self, step: int) -> float:
        """α for optimizer step ``step`` (the epoch schedule reads the current epoch)."""
        if self.cfg.schedule == "linear_step":
            return l1_weight(self.cfg.alpha, step, self.total_steps, "linear_step")
        return l1_weight(self.cfg.alpha, self.epoch, self.total_epochs, self.cfg.schedule, self.cfg.no_l1_epochs)

    def loss(self, model, batch, ctx):
        ce = ctx.adapter.per_sample_nll(model, batch["retain"])[0].mean()
        weight = self.current_weight(ctx.step)
        penalty = l1_norm(model)
        loss = ce + weight * penalty if weight else ce
        return loss, {"retain_loss": ce.item(), "l1_weight": weight, "l1_norm": float(penalty.detach())}
