"""BadTeacher (Chundawat et al. 2023): distil from an incompetent teacher on forget.

The student (the model being unlearned) matches two frozen teachers: a randomly initialised
copy of the architecture (every module's ``reset_parameters``, seeded) on forget samples,
the original model (the reference, ``needs_reference``) on retain samples. As the reference
``blindspot_unlearner`` (vikram2000b/bad-teaching-unlearning ``unlearn.py``) an epoch is
one shuffled pass over the forget set together with a random ``retain_fraction`` (30%) of
the retain set, drawn once (``pairing="mixed"``); a batch holds both kinds of samples in
varying numbers and the loss is the per-sample KL to each sample's teacher, averaged over
the batch::

    loss = (Σ_forget KL_T(p_bad || p_student) + retain_weight · Σ_retain KL_T(p_orig || p_student)) / batch size

The reference's ``F.kl_div(..., reduction="mean")`` also divides by the number of classes (a
constant factor, immaterial with its Adam optimizer); it has no ``retain_weight`` (1 here).
``pairing="pairs"`` takes forget batches paired with sampled retain batches instead (the
epoch is one forget pass) and averages each side separately. ``KL_T`` compares
temperature-T softmaxes (the reference's ``KL_temperature``, default 1), not rescaled by T².
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
        pairing: "mixed" (the reference: forget ∪ a ``retain_fraction`` of retain, shuffled
            together) or "pairs" (forget batches paired with sampled retain batches).
        retain_fraction: Share of the retain set in a "mixed" epoch (the reference: 0.3).
    """

    temperature: float = 1.0
    retain_weight: float = 1.0
    teacher_seed: int = 0
    pairing: str = "mixed"
    retain_fraction: float = 0.3


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
        if self.cfg.pairing not in ("mixed", "pairs") or not 0 < self.cfg.retain_fraction <= 1:
            raise ConfigError(f"BadTeacher needs pairing 'mixed' or 'pairs' and retain_fraction in (0, 1]; got {self.cfg.pairing!r}, "
                              f"{self.cfg.retain_fraction}")
        self.anchor = "mixed" if self.cfg.pairing == "mixed" else "forget"
        self.retain_fraction = self.cfg.retain_fraction
        self.bad_teacher: nn.Module | None = None

    def setup(self, model, ctx):
        if ctx.ref_model is None:
            raise ConfigError("BadTeacher needs the original model as reference (ctx.ref_model)")
        self.bad_teacher = random_teacher(ctx.ref_model, self.cfg.teacher_seed)

    def loss(self, model, batch, ctx):
        T = self.cfg.temperature
        kl, logs = {}, {}
        for side, teacher in (("forget", self.bad_teacher), ("retain", ctx.ref_model)):
            if side in batch:
                with torch.no_grad():
                    target = ctx.adapter.logits(teacher, batch[side])
                kl[side] = kl_from_logits(target / T, ctx.adapter.logits(model, batch[side]) / T)  # [b_side]
        if "forget" in kl:
            logs["forget_kl_bad"] = kl["forget"].mean().item()
        if "retain" in kl:
            logs["retain_kl_orig"] = kl["retain"].mean().item()
        w = self.cfg.retain_weight
        if self.cfg.pairing == "pairs":
            loss = kl["forget"].mean() + w * kl["retain"].mean()
        else:  # one average over the batch's samples, whatever their side
            total = sum(len(v) for v in kl.values())
            loss = (kl["forget"].sum() if "forget" in kl else 0.0) + (w * kl["retain"].sum() if "retain" in kl else 0.0)
            loss = loss / total
        return loss, logs
