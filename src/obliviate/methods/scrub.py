"""SCRUB (Kurmanji et al. 2023): alternating max steps on forget and min steps on retain.

The student (the model being unlearned) starts from the teacher (the frozen original,
``needs_reference``). Training is a sequence of *rounds* (SCRUB's epochs); round r is

- if ``r < msteps``: ``max_steps_per_round`` **max steps** on forget batches, each
  *maximising* ``KL_T(teacher || student)`` (loss = −KL; no CE);
- then ``min_steps_per_round`` **min steps** on retain batches, each *minimising*
  ``gamma · CE + alpha · KL_T(teacher || student)``.

Each optimizer step is one kind or the other, never one joint loss. ``KL_T`` is the
distillation KL at temperature T, multiplied by T² (the reference ``DistillKL``);
``kl_direction="student_teacher"`` uses KL(student || teacher) instead.

By default a round's min phase is one pass over the retain set (the method anchors the
epoch on the retain set, so that is one trainer epoch) and its max phase is one pass
worth of forget batches (``ceil(n_f / effective batch size)`` optimizer steps); both are
derived when training begins. Forget batches are the pair batches' forget side (sampled
uniformly). The trainer's step budget (``num_train_epochs`` / ``max_steps``) bounds the
whole schedule; the plan is logged at the start.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
from transformers import TrainerCallback

from obliviate.errors import ConfigError
from obliviate.registry import METHODS
from obliviate.methods.base import UnlearningMethod
from obliviate.models.adapters import kl_from_logits

log = logging.getLogger(__name__)


@dataclass
class SCRUBConfig:
    """Arguments of SCRUB.

    Attributes:
        msteps: Number of initial rounds that contain max steps (later rounds only min).
        alpha: Weight of the KL term in min steps.
        gamma: Weight of the retain cross-entropy in min steps.
        kd_T: Distillation temperature T.
        kl_direction: "teacher_student" (KL(p_teacher || p_student), the reference code) or
            "student_teacher".
        max_steps_per_round: Max (forget) optimizer steps per round; default one pass over
            the forget set.
        min_steps_per_round: Min (retain) optimizer steps per round; default one trainer
            epoch (one pass over the retain set).
    """

    msteps: int = 2
    alpha: float = 0.001
    gamma: float = 0.99
    kd_T: float = 4.0
    kl_direction: str = "teacher_student"
    max_steps_per_round: int | None = None
    min_steps_per_round: int | None = None


def step_kind(step: int, msteps: int, n_max: int, n_min: int) -> str:
    """``"max"`` or ``"min"`` for optimizer step ``step`` (0-based) of the SCRUB schedule."""
    period = n_max + n_min
    if n_max > 0 and step < msteps * period and step % period < n_max:
        return "max"
    return "min"


def distill_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, T: float, direction: str = "teacher_student") -> torch.Tensor:
    """Per-sample ``KL · T²`` between temperature-softened distributions ``[b]``."""
    s, t = student_logits / T, teacher_logits / T
    kl = kl_from_logits(t, s) if direction == "teacher_student" else kl_from_logits(s, t)
    return kl * T**2


class _Plan(TrainerCallback):
    def __init__(self, method: "SCRUB", ctx) -> None:
        self.method, self.ctx = method, ctx

    def on_train_begin(self, args, state, control, train_dataloader=None, **kwargs):
        m, c = self.method, self.method.cfg
        ga, world = max(1, args.gradient_accumulation_steps), max(1, args.world_size)
        if c.min_steps_per_round is not None:
            m.n_min = c.min_steps_per_round
        elif train_dataloader is not None:
            m.n_min = math.ceil(len(train_dataloader) / ga)
        if c.max_steps_per_round is not None:
            m.n_max = c.max_steps_per_round
        else:
            pairs = getattr(train_dataloader, "dataset", None)
            forget = getattr(pairs, "forget", None) or self.ctx.extras.get("forget_dataset")
            if forget is not None:
                m.n_max = math.ceil(len(forget) / (args.per_device_train_batch_size * ga * world))
        if m.n_max is None or m.n_min is None:
            raise ConfigError("SCRUB could not derive its schedule; set max_steps_per_round and min_steps_per_round")
        total = int(state.max_steps)
        n_max_total = sum(step_kind(s, c.msteps, m.n_max, m.n_min) == "max" for s in range(total))
        log.info("SCRUB plan: rounds of %d max + %d min steps, max steps in the first %d rounds; "
                 "%d of %d optimizer steps are max steps", m.n_max, m.n_min, c.msteps, n_max_total, total)


@METHODS.register("SCRUB", tracks=("vision",))
class SCRUB(UnlearningMethod):
    """Alternating max (forget) / min (retain) steps against the frozen original teacher."""

    Config = SCRUBConfig
    needs_reference = True
    anchor = "retain"

    def __init__(self, config: SCRUBConfig | None = None) -> None:
        super().__init__(config)
        c = self.cfg
        if c.msteps < 0 or c.kd_T <= 0:
            raise ConfigError(f"SCRUB needs msteps >= 0 and kd_T > 0; got msteps={c.msteps}, kd_T={c.kd_T}")
        if c.kl_direction not in ("teacher_student", "student_teacher"):
            raise ConfigError(f"SCRUB kl_direction must be 'teacher_student' or 'student_teacher', got '{c.kl_direction}'")
        for name in ("max_steps_per_round", "min_steps_per_round"):
            value = getattr(c, name)
            if value is not None and value < (0 if name.startswith("max") else 1):
                raise ConfigError(f"SCRUB {name} must be {'>= 0' if name.startswith('max') else '>= 1'}, got {value}")
        self.n_max: int | None = c.max_steps_per_round
        self.n_min: int | None = c.min_steps_per_round
        self.kinds: list[tuple[int, str]] = []  # (optimizer step, kind) per loss call

    def callbacks(self, ctx) -> list[TrainerCallback]:
        """Derives the round lengths from the data loader when training begins."""
        return [_Plan(self, ctx)]

    def kind(self, step: int) -> str:
        """Kind of optimizer step ``step`` ("max" on forget, "min" on retain)."""
        if self.n_max is None or self.n_min is None:
            raise ConfigError("SCRUB schedule unknown: run it through UnlearningTrainer or set max/min_steps_per_round")
        return step_kind(step, self.cfg.msteps, self.n_max, self.n_min)

    def loss(self, model, batch, ctx):
        c = self.cfg
        kind = self.kind(ctx.step)
        self.kinds.append((ctx.step, kind))
        if kind == "max":
            forget = batch["forget"]
            with torch.no_grad():
                t_logits = ctx.adapter.logits(ctx.ref_model, forget)
            kl = distill_kl(ctx.adapter.logits(model, forget), t_logits, c.kd_T, c.kl_direction).mean()
            return -kl, {"scrub_max_step": 1.0, "forget_kl": kl.item()}
        retain = batch["retain"]
        with torch.no_grad():
            t_logits = ctx.adapter.logits(ctx.ref_model, retain)
        ce, s_logits = ctx.adapter.per_sample_nll(model, retain)
        kl = distill_kl(s_logits, t_logits, c.kd_T, c.kl_direction).mean()
        loss = c.gamma * ce.mean() + c.alpha * kl
        return loss, {"scrub_max_step": 0.0, "retain_loss": ce.mean().item(), "retain_kl": kl.item()}
