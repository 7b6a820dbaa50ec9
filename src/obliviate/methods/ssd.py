"""SSD (selective synaptic dampening, Foster et al. 2024), one-shot.

Importances are diagonal Fisher estimates of the CE loss: ``I_f`` over the forget set and
``I_D`` over a reference set. Parameters far more important to the forget set than to the
reference are *selected* and *dampened*::

    selected_j  ⇔  I_f,j > α · I_D,j
    θ_j ← β_j · θ_j,   β_j = min(λ · I_D,j / I_f,j, 1)        (for selected j only)

**The reference code** (``ssd.py``, ``ParameterPerturber.calc_importance``) estimates an
importance as the *squared gradient of each batch's mean loss*, averaged over the batches
of an unshuffled loader (``importance="batch"``), with ``I_D`` over the full training set
(retain then forget, ``reference="full"``), α = 10, λ = 1. Its full-class data sets are
built class by class, so its batches each hold one class (``batch_order="class"``, the
default here); its random-forgetting sets are in random order (``batch_order="random"``).
The order matters: a batch of one class has a coherent mean gradient, a mixed batch a
partly cancelled one, so the batch estimator's scale depends on the order (the digits demo,
class 9, ``reference="retain"``: 10,734 parameters selected with class-sorted batches,
14,840 with mixed ones). It also depends on the set sizes: a forget set that fills a single
batch is not averaged at all, and then selects far more than the per-sample Fisher does
(``importance="per_sample"``: 1,503 on the same case).

**Where the reference cannot select**: ``I_D`` over a set that *contains* the forget set is
at least (forget share) × ``I_f`` -- exactly so for per-sample importance, ``I_D = (n_f·I_f +
n_r·I_r)/N ≥ (n_f/N)·I_f``, and about so for the batch estimator when the forget set fills
whole batches of the full pass -- so for ``α ≥ N/n_f`` (α = 10 when a tenth of the data is
forgotten: one class of CIFAR-10) nothing is selected, or only what batch boundaries and
noise let through. The default here is therefore ``reference="retain"`` (``I_D`` over the
retain set); ``reference="full"`` is the reference's choice and an impossible α is
reported up front (per-sample importance). Either way the number of selected and dampened
parameters is measured (``self.stats``) and a run that dampens nothing warns (WARNING, and
``warnings`` in ``metrics.json``) instead of reporting success.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import ConcatDataset, Dataset, Subset

from obliviate.errors import ConfigError
from obliviate.registry import METHODS
from obliviate.methods.base import UnlearningMethod
from obliviate.methods.ff import change_stats, diag_fisher, snapshot, trainable_params

log = logging.getLogger(__name__)


@dataclass
class SSDConfig:
    """Arguments of SSD.

    Attributes:
        alpha: Selection weighting α: select parameters with ``I_f > α·I_D``.
        lam: Dampening constant λ: selected parameters are scaled by ``min(λ·I_D/I_f, 1)``.
        reference: Set of ``I_D``: "retain" (default) or "full" (retain then forget, as in the
            reference code; cannot select anything when α ≥ N/n_f, see the module doc).
        importance: "batch" (the reference's estimator: squared batch-mean gradients averaged
            over batches; depends on ``batch_size`` and ``batch_order``) or "per_sample"
            (squared per-sample gradients: the diagonal empirical Fisher, independent of
            batching).
        batch_order: Order of the samples in the "batch" estimator's unshuffled batches:
            "class" (each set sorted by label, so batches hold one class, as the reference's
            full-class sets) or "random" (a seeded shuffle, as the reference's random-forgetting
            sets). Ignored by "per_sample".
        batch_size: Batch size of the importance passes (the reference uses 64 for full-class
            and 128 for random forgetting).
        num_samples: Reference samples used for ``I_D`` (a seeded random subset; ``None`` =
            all). The forget importance always uses the whole forget set.
    """

    alpha: float = 10.0
    lam: float = 1.0
    reference: str = "retain"
    importance: str = "batch"
    batch_order: str = "class"
    batch_size: int = 64
    num_samples: int | None = None


@torch.no_grad()
def dampen(params: dict[str, torch.Tensor], imp_forget: dict[str, torch.Tensor], imp_ref: dict[str, torch.Tensor],
           alpha: float, lam: float) -> dict[str, int]:
    """Scale selected parameters in place; returns ``{"selected", "dampened", "total"}`` counts.

    ``dampened`` counts selected entries whose factor is < 1 (and whose value was non-zero).
    """
    selected = dampened = total = 0
    for n, p in params.items():
        f, r = imp_forget[n], imp_ref[n]
        sel = f > alpha * r
        beta = torch.where(sel, (lam * r / torch.where(sel, f, torch.ones_like(f))).clamp(max=1.0), torch.ones_like(f))
        dampened += int((sel & (beta < 1) & (p != 0)).sum())
        selected += int(sel.sum())
        total += p.numel()
        p.mul_(beta.to(p.dtype))
    return {"selected": selected, "dampened": dampened, "total": total}


@METHODS.register("SSD", tracks=("vision",))
class SelectiveSynapticDampening(UnlearningMethod):
    """One-shot Fisher-importance selection and dampening (see module doc)."""

    Config = SSDConfig
    one_shot = True

    def __init__(self, config: SSDConfig | None = None) -> None:
        super().__init__(config)
        c = self.cfg
        if c.alpha <= 0 or c.lam < 0:
            raise ConfigError(f"SSD needs alpha > 0 and lam >= 0; got alpha={c.alpha}, lam={c.lam}")
        if c.reference not in ("retain", "full"):
            raise ConfigError(f"SSD reference must be 'retain' or 'full', got '{c.reference}'")
        if c.importance not in ("batch", "per_sample"):
            raise ConfigError(f"SSD importance must be 'batch' or 'per_sample', got '{c.importance}'")
        if c.batch_order not in ("class", "random"):
            raise ConfigError(f"SSD batch_order must be 'class' or 'random', got '{c.batch_order}'")
        if c.batch_size < 1:
            raise ConfigError("SSD batch_size must be >= 1")
        self.stats: dict[str, float] = {}

    def _ordered(self, ds: Dataset, seed: int) -> Dataset:
        """``ds`` in the batch estimator's order (label-sorted or a seeded shuffle)."""
        if self.cfg.importance != "batch":
            return ds
        n = len(ds)  # type: ignore[arg-type]
        if self.cfg.batch_order == "random":
            rows = np.random.default_rng(seed).permutation(n)
        else:
            labels = getattr(ds, "labels", None)
            labels = np.asarray(labels) if labels is not None else np.array([int(ds[i]["labels"]) for i in range(n)])  # type: ignore[index]
            rows = np.argsort(labels, kind="stable")
        return Subset(ds, rows.tolist())

    def importances(self, model: nn.Module, forget_ds: Dataset, retain_ds: Dataset, adapter: Any, seed: int) -> tuple[dict, dict]:
        """``(I_f, I_D)`` as ``{name: tensor}``."""
        kw = {"batch_size": self.cfg.batch_size, "mode": self.cfg.importance}
        forget, retain = self._ordered(forget_ds, seed), self._ordered(retain_ds, seed + 1)
        imp_f = diag_fisher(model, adapter, forget, **kw)
        if self.cfg.reference == "retain":
            return imp_f, diag_fisher(model, adapter, retain, num_samples=self.cfg.num_samples, seed=seed, **kw)
        n_f, n_r = len(forget_ds), len(retain_ds)  # type: ignore[arg-type]
        w = n_f / (n_f + n_r)
        if self.cfg.importance == "per_sample" and self.cfg.alpha >= 1 / w:
            self.warn(f"SSD with reference='full' and alpha={self.cfg.alpha:g} >= N/n_f={1 / w:.3g} can never select a parameter "
                      "(the full set contains the forget set); use reference='retain' or a smaller alpha")
        if self.cfg.importance == "batch":  # the reference: one unshuffled pass over retain then forget
            return imp_f, diag_fisher(model, adapter, ConcatDataset([retain, forget]), **kw)
        imp_r = diag_fisher(model, adapter, retain, num_samples=self.cfg.num_samples, seed=seed, **kw)
        return imp_f, {n: w * imp_f[n] + (1 - w) * imp_r[n] for n in imp_r}

    def apply(self, model: nn.Module, forget_ds: Dataset, retain_ds: Dataset, adapter: Any, seed: int) -> nn.Module:
        """Dampen the forget-specific parameters of ``model`` in place and return it."""
        if len(forget_ds) == 0 or retain_ds is None or len(retain_ds) == 0:  # type: ignore[arg-type]
            raise ConfigError("SSD needs non-empty forget and retain sets")
        imp_f, imp_ref = self.importances(model, forget_ds, retain_ds, adapter, seed)
        before = snapshot(model)
        counts = dampen(trainable_params(model), imp_f, imp_ref, self.cfg.alpha, self.cfg.lam)
        self.stats = {**counts, "selected_fraction": counts["selected"] / max(counts["total"], 1), **change_stats(before, model)}
        log.info("SSD: selected %d of %d parameters (%.3f%%), dampened %d; relative change %.3g",
                 counts["selected"], counts["total"], 100 * self.stats["selected_fraction"], counts["dampened"], self.stats["relative"])
        if counts["dampened"] == 0:
            self.warn(f"SSD dampened no parameter (selected {counts['selected']} with alpha={self.cfg.alpha:g}, lam={self.cfg.lam:g}): "
                      "the model is unchanged. Lower alpha, or check the forget set differs from the reference set.")
        return model
