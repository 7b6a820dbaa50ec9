"""IU (influence unlearning), one-shot: a WoodFisher Newton step towards the retrained model.

With ``N = n_f + n_r`` training samples, the influence-function estimate of the retrained
model is one Newton step on the retain loss (Koh & Liang 2017; Jia et al. 2023)::

    v  = (n_f / N) · (mean_f ∇ℓ − mean_r ∇ℓ)        (= −∇L_retain at a stationary point of L_train)
    θ' = θ + α · H⁻¹ v,    H ≈ λ·I + (1/n) Σ_{i=1..n} g_i g_iᵀ  (WoodFisher, n retain samples)

``H⁻¹ v`` is computed exactly, matrix-free, with the Woodbury identity over the per-sample
retain gradients g_i (the rows of G, ``[n, d]``)::

    H⁻¹ v = (v − Gᵀ (nλ·I_n + G Gᵀ)⁻¹ G v) / λ

which equals the WoodFisher Sherman–Morrison recursion (Singh & Alistarh 2020) and
``torch.linalg.solve(λI + GᵀG/n, v)``, and needs only the n×n Gram matrix ``G Gᵀ``, the
n-vector ``G v`` and one pass for ``Gᵀ w``. G never has to be in memory at once: it is
produced in blocks of per-sample gradients that fit ``max_memory_mb`` (two blocks at a
time), and blocks are recomputed when they do not all fit, so the rank n (``num_samples``,
default 1024 as the reference's ``N = 1000``) does not depend on the model size: a
standard ResNet-18 (11.2M parameters, 45 MB per gradient) gets the same rank as a small
CNN, at the price of recomputing gradients (the plan is logged). The reference's own
recursion only ever tracks the first gradient's direction (its ``o_vec``), so its update
is a rank-one correction of ``v``; here every sample enters the inverse.

The update is measured (``self.stats``: L2 norm, relative change ‖Δθ‖/‖θ‖, max |Δθ|, the
rank n) and logged; a relative change below ``min_relative_change`` is a silent no-op in
disguise, so it warns (``on_negligible="warn"``: WARNING, and ``warnings`` in
``metrics.json``) or raises (``"raise"``). An update larger than ``max_relative_change``
warns too (the Newton step overshoots when the damping is too small for the model's
Fisher scale).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset, Subset

from obliviate.errors import ConfigError
from obliviate.registry import METHODS
from obliviate.methods.base import UnlearningMethod
from obliviate.methods.ff import change_stats, eval_mode, iter_batches, mean_grad, model_device, per_sample_grads, snapshot, trainable_params

log = logging.getLogger(__name__)


@dataclass
class IUConfig:
    """Arguments of IU (influence unlearning).

    Attributes:
        alpha: Step size α of ``θ + α·H⁻¹v`` (1 = the full Newton step).
        damping: λ of ``H = λI + F``; smaller trusts the Fisher more and moves further. Its
            best value depends on the model's Fisher scale (0.01 on digits, 1.0 on the
            CIFAR-10 benchmark: see the experiment presets).
        num_samples: Retain samples whose per-sample gradients build the WoodFisher (a
            seeded random subset; the rank of the Fisher term). Capped by the retain set size.
        max_memory_mb: Memory budget for the per-sample gradient blocks in memory at once
            (two blocks of ``rows × d`` floats); a smaller budget means more recomputation,
            never a lower rank.
        batch_size: Batch size of the gradient passes.
        min_relative_change: ‖Δθ‖/‖θ‖ below this counts as a negligible update.
        max_relative_change: ‖Δθ‖/‖θ‖ above this is logged as a warning (the step likely
            wrecks the model: increase damping or decrease alpha).
        on_negligible: "warn" or "raise" (:class:`~obliviate.errors.ConfigError`) when the
            update is negligible.
    """

    alpha: float = 1.0
    damping: float = 0.1
    num_samples: int = 1024
    max_memory_mb: float = 2048.0
    batch_size: int = 64
    min_relative_change: float = 1e-4
    max_relative_change: float = 0.25
    on_negligible: str = "warn"


def woodfisher_ihvp(grad_block: Callable[[int, int], torch.Tensor], v: torch.Tensor, n: int, damping: float,
                    block_rows: int | None = None) -> torch.Tensor:
    """``(λI + (1/n) Σ g_i g_iᵀ)⁻¹ v`` by the Woodbury identity, G produced in blocks.

    Args:
        grad_block: ``grad_block(i0, i1)`` returns the flat per-sample gradients of rows
            ``i0 .. i1-1``, ``[i1 - i0, d]``; it must return the same rows every time it is called.
        v: Vector ``[d]``.
        n: The number of gradients (the 1/n of the Fisher).
        damping: λ > 0.
        block_rows: Rows per block (default: all n in one block, computed once).

    Returns:
        ``[d]`` in the dtype of ``v``.
    """
    rows = n if block_rows is None else max(1, min(int(block_rows), n))
    bounds = [(i, min(i + rows, n)) for i in range(0, n, rows)]
    gram = torch.zeros(n, n, dtype=torch.float64, device=v.device)  # G Gᵀ
    gv = torch.zeros(n, dtype=torch.float64, device=v.device)  # G v
    cached: dict[int, torch.Tensor] = {}

    def block(j: int) -> torch.Tensor:
        if len(bounds) == 1:  # everything fits: compute once, reuse for the last pass
            if j not in cached:
                cached[j] = grad_block(*bounds[j]).to(v.dtype)
            return cached[j]
        g = grad_block(*bounds[j]).to(v.dtype)
        if g.shape[0] != bounds[j][1] - bounds[j][0]:
            raise ValueError(f"grad_block{bounds[j]} returned {g.shape[0]} rows")
        return g

    for a, (a0, a1) in enumerate(bounds):
        ga = block(a)
        gv[a0:a1] = (ga @ v).double()
        gram[a0:a1, a0:a1] = (ga @ ga.T).double()
        for b in range(a + 1, len(bounds)):
            b0, b1 = bounds[b]
            cross = (ga @ block(b).T).double()
            gram[a0:a1, b0:b1], gram[b0:b1, a0:a1] = cross, cross.T
    w = torch.linalg.solve(gram + n * damping * torch.eye(n, dtype=torch.float64, device=v.device), gv).to(v.dtype)
    out = v.clone()
    for a, (a0, a1) in enumerate(bounds):
        out -= block(a).T @ w[a0:a1]
    return out / damping


def _flat(tensors: dict[str, torch.Tensor], names: list[str]) -> torch.Tensor:
    return torch.cat([tensors[n].reshape(-1) for n in names])


def _flat_batch(grads: dict[str, torch.Tensor], names: list[str]) -> torch.Tensor:
    b = len(grads[names[0]])
    return torch.cat([grads[n].reshape(b, -1) for n in names], dim=1)  # [b, d]


@METHODS.register("IU", tracks=("vision",))
class InfluenceUnlearning(UnlearningMethod):
    """One-shot WoodFisher influence update ``θ + α·H⁻¹v`` (see module doc)."""

    Config = IUConfig
    one_shot = True

    def __init__(self, config: IUConfig | None = None) -> None:
        super().__init__(config)
        c = self.cfg
        if c.damping <= 0 or c.alpha == 0:
            raise ConfigError(f"IU needs damping > 0 and alpha != 0; got damping={c.damping}, alpha={c.alpha}")
        if c.num_samples < 1 or c.batch_size < 1 or c.max_memory_mb <= 0:
            raise ConfigError("IU num_samples, batch_size and max_memory_mb must be positive")
        if c.on_negligible not in ("warn", "raise"):
            raise ConfigError(f"IU on_negligible must be 'warn' or 'raise', got '{c.on_negligible}'")
        self.stats: dict[str, float] = {}

    def direction(self, model: nn.Module, forget_ds: Dataset, retain_ds: Dataset, adapter: Any, seed: int) -> torch.Tensor:
        """``H⁻¹ v`` as a flat vector over :func:`trainable_params` (in their order)."""
        params = trainable_params(model)
        names = list(params)
        d = sum(p.numel() for p in params.values())
        n_f, n_r = len(forget_ds), len(retain_ds)  # type: ignore[arg-type]
        g_f = _flat(mean_grad(model, adapter, forget_ds, batch_size=self.cfg.batch_size), names)
        g_r = _flat(mean_grad(model, adapter, retain_ds, batch_size=self.cfg.batch_size), names)
        v = (n_f / (n_f + n_r)) * (g_f - g_r)
        n = min(self.cfg.num_samples, n_r)
        rows = max(1, int(self.cfg.max_memory_mb * 2**20 // (2 * 4 * max(d, 1))))  # two blocks of float32 rows
        n_blocks = -(-n // min(rows, n))
        computed = 1 if n_blocks == 1 else n_blocks + n_blocks * (n_blocks - 1) // 2 + n_blocks
        self.stats["rank"], self.stats["gradient_passes"] = n, computed / n_blocks
        log.info("IU: %d parameters; WoodFisher of rank %d (retain samples) in %d block(s) of <= %d gradients "
                 "(max_memory_mb=%g): %.1f passes over the %d samples", d, n, n_blocks, min(rows, n), self.cfg.max_memory_mb,
                 computed / n_blocks, n)
        subset = Subset(retain_ds, np.sort(np.random.default_rng(seed).permutation(n_r)[:n]).tolist())

        def grad_block(i0: int, i1: int) -> torch.Tensor:
            out = []
            with eval_mode(model):
                for batch in iter_batches(Subset(subset, list(range(i0, i1))), self.cfg.batch_size, device=model_device(model)):
                    out.append(_flat_batch(per_sample_grads(model, adapter, batch), names).detach())
            return torch.cat(out)

        return woodfisher_ihvp(grad_block, v.detach(), n, self.cfg.damping, rows)

    def apply(self, model: nn.Module, forget_ds: Dataset, retain_ds: Dataset, adapter: Any, seed: int) -> nn.Module:
        """Apply ``θ ← θ + α·H⁻¹v`` in place; measure the change and warn if it is negligible."""
        if len(forget_ds) == 0 or retain_ds is None or len(retain_ds) == 0:  # type: ignore[arg-type]
            raise ConfigError("IU needs non-empty forget and retain sets")
        self.stats = {}
        step = self.cfg.alpha * self.direction(model, forget_ds, retain_ds, adapter, seed)
        before = snapshot(model)
        with torch.no_grad():
            start = 0
            for p in trainable_params(model).values():
                p.add_(step[start : start + p.numel()].view_as(p).to(p.dtype))
                start += p.numel()
        self.stats = {**self.stats, **change_stats(before, model)}
        log.info("IU: ||Δθ|| = %.4g, relative change ||Δθ||/||θ|| = %.3g, max |Δθ| = %.3g",
                 self.stats["l2"], self.stats["relative"], self.stats["max_abs"])
        if not torch.isfinite(step).all():
            raise ConfigError("IU produced a non-finite update; increase damping")
        if self.stats["relative"] < self.cfg.min_relative_change:
            msg = (f"IU update is negligible: ||Δθ||/||θ|| = {self.stats['relative']:.3g} < min_relative_change="
                   f"{self.cfg.min_relative_change:g}; the model is practically unchanged. Increase alpha or decrease damping.")
            if self.cfg.on_negligible == "raise":
                raise ConfigError(msg)
            self.warn(msg)
        elif self.stats["relative"] > self.cfg.max_relative_change:
            self.warn(f"IU update is very large: ||Δθ||/||θ|| = {self.stats['relative']:.3g} > max_relative_change="
                      f"{self.cfg.max_relative_change:g}; the model may be wrecked (increase damping or decrease alpha)")
        return model
