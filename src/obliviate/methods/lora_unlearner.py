"""LoRAUnlearner: the loss of seed 004's ``Unlearner`` as a registered method.

Per batch pair::

    p_f  = mean_b p_θ(y_b | x_b) over the forget batch            (batch forget probability)
    loss = −CE_f + λ_retain · CE_r     if p_f ≥ forget_threshold
    loss =          λ_retain · CE_r     otherwise (the forget term is dropped)

and training stops early at the end of the first epoch whose mean batch forget
probability is below ``forget_threshold`` (a ``TrainerCallback`` exposed through
``callbacks``). The method only computes the loss: wrap the model with LoRA first
(:func:`obliviate.models.lora.apply_lora`) to get seed 004's low-rank unlearner; without
LoRA it trains the full model with the same objective.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from transformers import TrainerCallback

from obliviate.errors import ConfigError
from obliviate.registry import METHODS
from obliviate.methods.base import UnlearningMethod

log = logging.getLogger(__name__)


@dataclass
class LoRAUnlearnerConfig:
    """Arguments of LoRAUnlearner.

    Attributes:
        lambda_retain: Weight λ_retain of the retain cross-entropy.
        forget_threshold: Batch forget probability below which the forget term is dropped,
            and epoch mean below which training stops.
        early_stop: Stop at the end of an epoch whose mean forget probability is below the
            threshold.
    """

    lambda_retain: float = 1.0
    forget_threshold: float = 0.05
    early_stop: bool = True


class _EarlyStop(TrainerCallback):
    def __init__(self, method: "LoRAUnlearner") -> None:
        self.method = method

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.method.epoch_probs = []

    def on_epoch_end(self, args, state, control, **kwargs):
        m = self.method
        mean = m.epoch_forget_prob()
        if mean is None:
            return
        m.history.append(mean)
        if m.cfg.early_stop and mean < m.cfg.forget_threshold:
            log.info("LoRAUnlearner: epoch mean forget probability %.4f < %.4f; stopping early", mean, m.cfg.forget_threshold)
            m.stopped_early = True
            control.should_training_stop = True


@METHODS.register("LoRAUnlearner", tracks=("vision",))
class LoRAUnlearner(UnlearningMethod):
    """``−CE_f + λ_retain·CE_r`` with a forget-probability threshold and early stop."""

    Config = LoRAUnlearnerConfig

    def __init__(self, config: LoRAUnlearnerConfig | None = None) -> None:
        super().__init__(config)
        if self.cfg.lambda_retain < 0 or not 0 <= self.cfg.forget_threshold <= 1:
            raise ConfigError(
                f"LoRAUnlearner needs lambda_retain >= 0 and forget_threshold in [0, 1]; got {self.cfg.lambda_retain}, {self.cfg.forget_threshold}"
            )
        self.epoch_probs: list[float] = []
        self.history: list[float] = []  # mean forget probability of each finished epoch
        self.stopped_early = False

    def callbacks(self, ctx) -> list[TrainerCallback]:
        """Early stopping on the epoch's mean forget probability."""
        return [_EarlyStop(self)]

    def epoch_forget_prob(self) -> float | None:
        """Mean batch forget probability of the current epoch so far (None before any batch)."""
        return sum(self.epoch_probs) / len(self.epoch_probs) if self.epoch_probs else None

    def loss(self, model, batch, ctx):
        f_nll, _ = ctx.adapter.per_sample_nll(model, batch["forget"])
        r_nll, _ = ctx.adapter.per_sample_nll(model, batch["retain"])
        ce_f, ce_r = f_nll.mean(), r_nll.mean()
        p_f = float(torch.exp(-f_nll.detach()).mean())  # mean true-class probability [b] -> scalar
        self.epoch_probs.append(p_f)
        active = p_f >= self.cfg.forget_threshold
        loss = self.cfg.lambda_retain * ce_r - (ce_f if active else 0.0)
        return loss, {"forget_prob": p_f, "forget_term_active": float(active), "forget_loss": ce_f.item(), "retain_loss": ce_r.item()}
