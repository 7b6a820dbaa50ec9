"""BadTeacher (Chundawat et al. 2023): distil from an incompetent teacher on forget.

The student (the model being unlearned) matches two frozen teachers::

    loss = mean_f KL_T(p_bad || p_student) + retain_weight · mean_r KL_T(p_orig || p_student)

``p_orig`` is the original model (the reference, ``needs_reference``) and ``p_bad`` a
randomly initialised copy of the same architecture (every module's ``reset_parameters``,
seeded). ``KL_T`` compares temperature-T softmaxes (the reference code's
``KL_temperature``, default 1) and is not rescaled by T².
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from obliviate.errors import ConfigError
from obliviate.registry import METHODS
from obliviate.methods.base import UnlearningMethod
from obliviate.models.adapters import kl_from_logits


@dataclass
class BadTeacherConfig:
    """Arguments of BadTeacher.

    Attributes:
        temperature: Softmax temperature of both teachers and the student.
        retain_weight: Weight of the retain (competent teacher) term.
        teacher_seed: Seed of the incompetent teacher's random initialisation.
    """

    temperature: float = 1.0
    retain_weight: float = 1.0
    teacher_seed: int = 0


def random_teacher(model: nn.Module, seed: int = 0) -> nn.Module:
    """A frozen, eval-mode copy of ``model`` with every module re-initialised (seeded)."""
    bad = copy.deepcopy(model)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        for module in bad.modules():
            reset = getattr(module, "reset_parameters", None)
            if callable(reset):
                reset()
    bad.eval()
    for p in bad.parameters():
        p.requires_grad_(False)
    return bad


@METHODS.register("BadTeacher", tracks=("vision",))
class BadTeacher(UnlearningMethod):
    """KL to a random teacher on forget and to the original model on retain."""

    Config = BadTeacherConfig
    needs_reference = True

    def __init__(self, config: BadTeacherConfig | None = None) -> None:
        super().__init__(config)
        if self.cfg.temperature <= 0 or self.cfg.retain_weight < 0:
            raise ConfigError(f"BadTeacher needs temperature > 0 and retain_weight >= 0; got {self.cfg.temperature}, {self.cfg.retain_weight}")
        self.bad_teacher: nn.Module | None = None

    def setup(self, model, ctx):
        if ctx.ref_model is None:
            raise ConfigError("BadTeacher needs the original model as reference (ctx.ref_model)")
        self.bad_teacher = random_teacher(ctx.ref_model, self.cfg.teacher_seed)

    def loss(self, model, batch, ctx):
        T = self.cfg.temperature
        forget, retain = batch["forget"], batch["retain"]
        with torch.no_grad():
            bad_logits = ctx.adapter.logits(self.bad_teacher, forget)
            good_logits = ctx.adapter.logits(ctx.ref_model, retain)
        kl_f = kl_from_logits(bad_logits / T, ctx.adapter.logits(model, forget) / T).mean()
        kl_r = kl_from_logits(good_logits / T, ctx.adapter.logits(model, retain) / T).mean()
        loss = kl_f + self.cfg.retain_weight * kl_r
        return loss, {"forget_kl_bad": kl_f.item(), "retain_kl_orig": kl_r.item()}
