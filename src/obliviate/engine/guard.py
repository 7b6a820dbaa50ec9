"""Divergence guard: stop a run whose loss is NaN/inf or whose retain loss explodes.

The guard watches every optimizer step's loss (and the method's ``retain_loss`` log when it
has one). It keeps a CPU snapshot of the last good weights (every ``snapshot_every`` steps);
on divergence it stops training and restores that snapshot, so the saved model is the last
good one, and the run is marked ``diverged``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


@dataclass
class GuardConfig:
    """Divergence-guard settings (``divergence.*`` in the configs).

    Attributes:
        enabled: Watch the run at all.
        retain_loss_factor: Stop when the retain loss exceeds this multiple of its first value
            (floored by ``retain_loss_floor``); ``None`` disables the retain check.
        retain_loss_floor: Lower bound of the reference retain loss (a near-zero start value
            would otherwise make any change look like a collapse).
        snapshot_every: Steps between CPU snapshots of the last good weights.
    """

    enabled: bool = True
    retain_loss_factor: float | None = 20.0
    retain_loss_floor: float = 0.1
    snapshot_every: int = 10


class DivergenceGuard:
    """Checks losses, keeps the last good snapshot, reports why a run diverged."""

    def __init__(self, config: GuardConfig | None = None) -> None:
        self.cfg = config or GuardConfig()
        self.start_retain: float | None = None
        self.reason: str | None = None
        self.step: int | None = None
        self._snapshot: dict[str, torch.Tensor] | None = None
        self._snapshot_step = 0

    @property
    def diverged(self) -> bool:
        return self.reason is not None

    def check(self, step: int, loss: float, logs: dict[str, float] | None = None) -> bool:
        """Record one step; returns True when the run must stop."""
        if not self.cfg.enabled or self.diverged:
            return self.diverged
        if not math.isfinite(loss):
            self.reason, self.step = f"loss is {loss} at step {step}", step
            return True
        retain = (logs or {}).get("retain_loss")
        if retain is not None and self.cfg.retain_loss_factor is not None:
            if not math.isfinite(retain):
                self.reason, self.step = f"retain loss is {retain} at step {step}", step
                return True
            if self.start_retain is None:
                self.start_retain = retain
            limit = self.cfg.retain_loss_factor * max(self.start_retain, self.cfg.retain_loss_floor)
            if retain > limit:
                self.reason = f"retain loss {retain:.4g} exceeded {self.cfg.retain_loss_factor:g}x its start value (limit {limit:.4g}) at step {step}"
                self.step = step
                return True
        return False

    def maybe_snapshot(self, model: nn.Module, step: int) -> None:
        """Keep a CPU copy of the weights every ``snapshot_every`` good steps (and at step 0)."""
        if self.cfg.enabled and not self.diverged and (self._snapshot is None or step - self._snapshot_step >= self.cfg.snapshot_every):
            self._snapshot = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
            self._snapshot_step = step

    def restore(self, model: nn.Module) -> int | None:
        """Load the last good snapshot into ``model``; returns its step."""
        if self._snapshot is None:
            return None
        model.load_state_dict(self._snapshot)
        return self._snapshot_step

    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs to judge the retain loss as the uninterrupted run does."""
        return {"start_retain": self.start_retain}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (saved next to a mid-training checkpoint)."""
        self.start_retain = state.get("start_retain")

    def report(self) -> dict[str, Any]:
        return {"diverged": self.diverged, "reason": self.reason, "step": self.step, "restored_step": self._snapshot_step if self.diverged else None}


def make_guard_config(node: Any) -> GuardConfig:
    """``GuardConfig`` from a config block (DictConfig/dict/None), rejecting unknown keys."""
    if node is None:
        return GuardConfig()
    from omegaconf import OmegaConf

    from obliviate.methods.base import make_config

    raw = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else dict(node)
    return make_config(GuardConfig, raw, "divergence")
