"""l1_sparse: fine-tuning on the retain set with a decaying ℓ1 penalty (Jia et al. 2023).

Loss at optimizer step t of T::

    CE_retain + α_t · ||θ||₁,     α_t = α · (1 − t / T)

so the penalty starts at α and decays linearly to 0 at the end of training (t = T; the
last step uses α/T). ``||θ||₁`` sums the absolute values of all trainable parameters. T is
the trainer's ``max_steps``, read when training begins (the method exposes a
``TrainerCallback`` through ``callbacks(ctx)``); ``schedule="constant"`` keeps α fixed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import TrainerCallback

from obliviate.errors import ConfigError
from obliviate.registry import METHODS
from obliviate.methods.base import UnlearningMethod


@dataclass
class L1SparseConfig:
    """Arguments of l1_sparse.

    Attributes:
        alpha: Initial weight α of the ℓ1 penalty.
        schedule: "linear" (α_t = α·(1 − t/T), decaying to 0) or "constant".
    """

    alpha: float = 5e-4
    schedule: str = "linear"


def l1_weight(alpha: float, step: int, total_steps: int | None, schedule: str = "linear") -> float:
    """α_t for optimizer step ``step`` of ``total_steps`` (α when T is unknown or constant)."""
    if schedule == "constant" or not total_steps:
        return alpha
    return alpha * max(0.0, 1.0 - step / total_steps)


def l1_norm(model: torch.nn.Module) -> torch.Tensor:
    """``Σ |θ|`` over trainable parameters."""
    return sum(p.abs().sum() for p in model.parameters() if p.requires_grad)  # type: ignore[return-value]


class _TotalSteps(TrainerCallback):
    def __init__(self, method: "L1Sparse") -> None:
        self.method = method

    def on_train_begin(self, args, state, control, **kwargs):
        self.method.total_steps = int(state.max_steps)


@METHODS.register("l1_sparse", tracks=("vision",))
class L1Sparse(UnlearningMethod):
    """FT on retain + α_t·||θ||₁ with α_t decaying linearly to 0 over training."""

    Config = L1SparseConfig
    needs_forget = False
    anchor = "retain"

    def __init__(self, config: L1SparseConfig | None = None) -> None:
        super().__init__(config)
        if self.cfg.alpha < 0:
            raise ConfigError(f"l1_sparse alpha must be >= 0, got {self.cfg.alpha}")
        if self.cfg.schedule not in ("linear", "constant"):
            raise ConfigError(f"l1_sparse schedule must be 'linear' or 'constant', got '{self.cfg.schedule}'")
        self.total_steps: int | None = None

    def callbacks(self, ctx) -> list[TrainerCallback]:
        """Reads the trainer's ``max_steps`` (T of the schedule) when training begins."""
        return [_TotalSteps(self)]

    def loss(self, model, batch, ctx):
        ce = ctx.adapter.per_sample_nll(model, batch["retain"])[0].mean()
        weight = l1_weight(self.cfg.alpha, ctx.step, self.total_steps, self.cfg.schedule)
        penalty = l1_norm(model)
        loss = ce + weight * penalty if weight else ce
        return loss, {"retain_loss": ce.item(), "l1_weight": weight, "l1_norm": float(penalty.detach())}
