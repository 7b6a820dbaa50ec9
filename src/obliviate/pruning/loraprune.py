"""LoRAPrune (original compression behaviour): LoRA-gradient importance, cubic schedule, ranking.

Importance of a weight (``prune_metric="lora"``) is estimated from the LoRA factors only, so the
frozen base weight never needs a gradient::

    Ĝ = (∇B·A + B·∇A − ∇B·∇A) · s            # s = LoRA scaling (alpha / r)
    I = |Ĝ ⊙ (W + s·B·A)|                      # element importance, weight shape

``Ĝ`` is ``−ΔW`` of the merged weight after one SGD step of learning rate 1 on ``A`` and ``B``:
``s[(B−∇B)(A−∇A) − BA] = −s(∇B·A + B·∇A − ∇B·∇A)``. Its first-order part
``s(∇B·A + B·∇A) = s²(G·AᵀA + BBᵀ·G)`` (``G`` = gradient of the merged weight) always has a
non-negative inner product with ``G``. While ``B = 0`` (PEFT initialisation) ``Ĝ = s·∇B·A`` is
uninformative, so LoRA warm-up steps must come first: :func:`group_importance` raises
:class:`LoRAWarmupError` when every ``B`` is zero.

Element importance is summed per group (:mod:`obliviate.pruning.groups`), normalised per
module (each module's group scores are divided by their sum, so q/k/v/o or gate/up/down count
equally), summed over the group's modules and smoothed with an EMA over steps (β = 0.9).
Other metrics: ``"grad"`` (``|∂L/∂W ⊙ W|``, needs ``W.grad``) and ``"magnitude"`` (``|W|``).

The sparsity (fraction of groups pruned) follows :func:`cubic_sparsity`; pruned groups are
soft-masked during training (:class:`~obliviate.pruning.groups.GroupMasks`) and physically
removed at the end (:func:`~obliviate.pruning.groups.remove_pruned_groups`).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from obliviate.errors import ConfigError
from obliviate.registry import PRUNERS
from obliviate.pruning.groups import GroupMasks, GroupSet, Member, base_layer, discover_groups

PRUNE_METRICS = ("lora", "grad", "magnitude")


class LoRAWarmupError(ConfigError):
    """LoRA importance was requested while every ``lora_B`` is zero (no warm-up yet)."""


# ----------------------------------------------------------------------------- importance
def estimated_weight_grad(A: torch.Tensor, B: torch.Tensor, grad_A: torch.Tensor, grad_B: torch.Tensor,
                          scaling: float) -> torch.Tensor:
    """LoRAPrune's weight-gradient estimate ``Ĝ = (∇B·A + B·∇A − ∇B·∇A)·s``.

    Args:
        A: ``[r, in]`` LoRA down factor (conv: flattened ``[r, in*kh*kw]``).
        B: ``[out, r]`` LoRA up factor.
        grad_A: ``[r, in]`` gradient of the loss w.r.t. ``A``.
        grad_B: ``[out, r]`` gradient of the loss w.r.t. ``B``.
        scaling: LoRA scaling ``s`` (``alpha / r``).

    Returns:
        ``[out, in]`` estimated gradient of the merged weight.
    """
    return (grad_B @ A + B @ grad_A - grad_B @ grad_A) * scaling


def lora_parts(module: nn.Module) -> tuple[torch.Tensor, torch.Tensor, float] | None:
    """``(A [r, in'], B [out, r], s)`` of the first active adapter of a PEFT LoRA layer, else None.

    Conv factors are flattened (``A``: ``[r, in*kh*kw]``, ``B``: ``[out, r]``).
    """
    if not hasattr(module, "lora_A") or not hasattr(module, "base_layer"):
        return None
    active = [a for a in getattr(module, "active_adapters", []) if a in module.lora_A]
    if not active:
        return None
    name = active[0]
    return module.lora_A[name].weight, module.lora_B[name].weight, float(module.scaling[name])


def effective_weight(module: nn.Module) -> torch.Tensor:
    """``W + s·B·A`` in the base weight's shape (just ``W`` without LoRA), detached."""
    w = base_layer(module).weight.detach()
    parts = lora_parts(module)
    if parts is None or getattr(module, "merged", False):
        return w
    A, B, s = parts
    return w + (B.detach().flatten(1) @ A.detach().flatten(1)).view_as(w) * s


def element_importance(module: nn.Module, metric: str = "lora") -> torch.Tensor:
    """Element importance (weight shape) of one module under ``metric``.

    Raises:
        ConfigError: Unknown metric, no LoRA factors (``lora``) or no gradient available.
    """
    if metric not in PRUNE_METRICS:
        raise ConfigError(f"prune_metric must be one of {PRUNE_METRICS}, got '{metric}'")
    w_eff = effective_weight(module)
    if metric == "magnitude":
        return w_eff.abs()
    if metric == "grad":
        g = base_layer(module).weight.grad
        if g is None:
            raise ConfigError("prune_metric='grad' needs the base weights' gradients (W.grad is None); unfreeze the "
                              "weights or use prune_metric='lora'")
        return (g.detach() * w_eff).abs()
    parts = lora_parts(module)
    if parts is None:
        raise ConfigError("prune_metric='lora' needs PEFT LoRA layers on every grouped module (apply_lora first), "
                          "or use prune_metric='grad' / 'magnitude'")
    A, B, s = parts
    if A.grad is None or B.grad is None:
        raise ConfigError("LoRA factors have no gradient; call loss.backward() before computing importance")
    g_hat = estimated_weight_grad(A.detach().flatten(1), B.detach().flatten(1), A.grad.detach().flatten(1),
                                  B.grad.detach().flatten(1), s)  # [out, in']
    return (g_hat.view_as(w_eff) * w_eff).abs()


def _member_scores(imp: torch.Tensor, member: Member) -> torch.Tensor:
    per_channel = imp.flatten(1).sum(1) if member.dim == 0 else imp.transpose(0, 1).flatten(1).sum(1)  # [channels]
    return per_channel[member.index.to(per_channel.device)].sum(-1).float().cpu()  # [n_groups]


NORMS = ("l2", "sum")


def group_importance(model: nn.Module, groups: list[GroupSet], metric: str = "lora", norm: str = "l2") -> dict[str, torch.Tensor]:
    """Per-group importance ``{set key: [n_groups]}`` from the current gradients.

    Each module's group scores are normalised before the group's modules are summed:
    ``norm="l2"`` divides them by their L2 norm (+1e-8), as LoRAPrune's ``compute_sensitivity``
    does; ``norm="sum"`` makes them sum to 1.

    Raises:
        ConfigError: Unknown ``norm``.
        LoRAWarmupError: ``metric="lora"`` and every ``lora_B`` is zero (warm up LoRA first).
    """
    if norm not in NORMS:
        raise ConfigError(f"importance norm must be one of {NORMS}, got '{norm}'")
    modules = dict(model.named_modules())
    if metric == "lora":
        bs = [p[1] for gs in groups for m in gs.members if m.kind == "weight"
              and (p := lora_parts(modules[m.name])) is not None]
        if bs and all(not bool(b.detach().any()) for b in bs):
            raise LoRAWarmupError("every lora_B is zero, so the LoRA gradient estimate is uninformative; run LoRA "
                                  "warm-up steps (training steps on the adapters) before estimating importance")
    out: dict[str, torch.Tensor] = {}
    for gs in groups:
        total = torch.zeros(gs.n_groups)
        for member in gs.members:
            if member.kind != "weight":
                continue
            scores = _member_scores(element_importance(modules[member.name], metric), member)
            total += scores / (scores.norm() + 1e-8) if norm == "l2" else scores / scores.sum().clamp_min(1e-12)
        out[gs.key] = total
    return out


class ImportanceTracker:
    """EMA of per-group importance over steps: ``S ← β·S + (1−β)·I`` from ``S = 0``.

    The zero start is LoRAPrune's (``init_sensitivity_dict``); since every group is scaled by
    the same ``1 − β^t``, the ranking equals that of a bias-corrected EMA. A step whose
    importance is not finite (NaN/inf gradients, e.g. an overflowing fp16 step) is skipped,
    as in LoRAPrune's ``update_sensitivity_dict``.

    Args:
        groups: Group sets to score.
        metric: "lora", "grad" or "magnitude".
        beta: EMA factor (0.9).
        norm: Per-module normalisation of :func:`group_importance` ("l2" or "sum").
    """

    def __init__(self, groups: list[GroupSet], metric: str = "lora", beta: float = 0.9, norm: str = "l2") -> None:
        if not 0.0 <= beta < 1.0:
            raise ConfigError(f"EMA beta must be in [0, 1), got {beta}")
        if norm not in NORMS:
            raise ConfigError(f"importance norm must be one of {NORMS}, got '{norm}'")
        self.groups, self.metric, self.beta, self.norm = groups, metric, beta, norm
        self.scores: dict[str, torch.Tensor] = {g.key: torch.zeros(g.n_groups) for g in groups}
        self.steps = 0
        self.skipped = 0

    def update(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """Fold the current gradients' importance into the EMA; returns the EMA scores."""
        current = group_importance(model, self.groups, self.metric, self.norm)
        if not all(bool(torch.isfinite(v).all()) for v in current.values()):
            self.skipped += 1
            return self.scores
        for key, value in current.items():
            self.scores[key] = self.beta * self.scores[key] + (1 - self.beta) * value
        self.steps += 1
        return self.scores


# ----------------------------------------------------------------------------- schedule
def cubic_sparsity(step: int, total_steps: int, init_ratio: float, target_ratio: float,
                   warmup_steps: int = 0, cooldown_steps: int = 0) -> float:
    """Cubic sparsity schedule (Zhu & Gupta), as used by LoRAPrune.

    ``init_ratio`` until ``warmup_steps``; then
    ``target + (init − target)·(1 − (step − warmup) / (total − warmup − cooldown))³``;
    ``target_ratio`` for the last ``cooldown_steps`` steps.

    Args:
        step: Current step (0-based).
        total_steps: Total number of steps.
        init_ratio: Sparsity at the start.
        target_ratio: Final sparsity.
        warmup_steps: Steps before pruning starts.
        cooldown_steps: Steps at the end with the target sparsity (fine-tuning only).

    Returns:
        The sparsity (fraction of groups pruned) at ``step``.
    """
    span = total_steps - warmup_steps - cooldown_steps
    if span <= 0:
        raise ConfigError(f"total_steps ({total_steps}) must exceed warmup ({warmup_steps}) + cooldown ({cooldown_steps})")
    if step <= warmup_steps:
        return float(init_ratio)
    if step >= total_steps - cooldown_steps:
        return float(target_ratio)
    frac = 1.0 - (step - warmup_steps) / span
    return float(target_ratio + (init_ratio - target_ratio) * frac**3)


def last_prune_step(total_steps: int, cooldown_steps: int = 0) -> int:
    """The step that applies the target sparsity: the start of cool-down (the last step without one)."""
    return min(total_steps - cooldown_steps, total_steps - 1)


def is_prune_step(step: int, total_steps: int, prune_freq: int, warmup_steps: int = 0, cooldown_steps: int = 0) -> bool:
    """True every ``prune_freq`` steps after warm-up, and at :func:`last_prune_step`.

    The last prune step always fires (with the target sparsity, see :meth:`LoRAPruner.step`),
    so the target is reached whatever ``prune_freq`` is. (LoRAPrune's trainer prunes only
    while ``init < ratio < target`` at ``step % prune_freq == 0``, so its runs end a little
    below the target; that is not copied.)
    """
    if prune_freq < 1:
        raise ConfigError(f"prune_freq must be >= 1, got {prune_freq}")
    end = last_prune_step(total_steps, cooldown_steps)
    return warmup_steps < step <= end and ((step - warmup_steps) % prune_freq == 0 or step == end)


# ----------------------------------------------------------------------------- ranking
def _n_prune(ratio: float, n: int) -> int:
    return min(int(math.floor(ratio * n + 1e-9)), n - 1)  # at least one group survives


def rank_groups(scores: dict[str, torch.Tensor], ratio: float, mode: str = "local",
                kinds: dict[str, str] | None = None, keep: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Keep masks pruning the least important groups to sparsity ``ratio``.

    Args:
        scores: ``{set key: [n_groups]}`` importance (higher = more important).
        ratio: Fraction of groups pruned (per set in local mode, per kind in global mode).
        mode: "local" (every set prunes ``floor(ratio·n)`` groups; same shapes in every layer)
            or "global" (groups of one kind, e.g. all attention groups, ranked together).
        kinds: ``{set key: kind}`` for global mode (default: one kind).
        keep: Current keep masks; pruned groups stay pruned (their score counts as −inf).

    Returns:
        ``{set key: bool [n_groups]}``, ``True`` = kept; every set keeps at least one group.
    """
    if not 0.0 <= ratio < 1.0:
        raise ConfigError(f"pruning ratio must be in [0, 1), got {ratio}")
    if mode not in ("local", "global"):
        raise ConfigError(f"ranking mode must be 'local' or 'global', got '{mode}'")
    masked = {}
    for key, s in scores.items():
        s = s.detach().float().cpu().clone()
        if keep is not None and key in keep:
            s[~keep[key].bool()] = -math.inf
        masked[key] = s
    out = {key: torch.ones_like(s, dtype=torch.bool) for key, s in masked.items()}
    if mode == "local":
        for key, s in masked.items():
            order = torch.sort(s, stable=True).indices
            out[key][order[:_n_prune(ratio, s.numel())]] = False
        return out
    kinds = kinds or {key: "all" for key in masked}
    for kind in sorted(set(kinds.values())):
        keys = [k for k in masked if kinds.get(k, "all") == kind]
        flat = torch.cat([masked[k] for k in keys])
        owner = torch.cat([torch.full((masked[k].numel(),), i) for i, k in enumerate(keys)])
        budget = int(math.floor(ratio * flat.numel() + 1e-9))
        left = {k: masked[k].numel() for k in keys}
        for idx in torch.sort(flat, stable=True).indices.tolist():
            if budget == 0:
                break
            key = keys[int(owner[idx])]
            if left[key] <= 1:
                continue
            local = idx - sum(masked[k].numel() for k in keys[: int(owner[idx])])
            out[key][local] = False
            left[key] -= 1
            budget -= 1
    return out


# ----------------------------------------------------------------------------- protected layers
def layer_index(key: str) -> int | None:
    """Decoder layer number of a group-set key (``"model.layers.3.mlp"`` -> 3), else None."""
    parts = key.split(".")
    return int(parts[-2]) if len(parts) >= 2 and parts[-2].isdigit() else None


def protected_sets(groups: list[GroupSet], protect: Any) -> set[str]:
    """Keys of the group sets in protected layers (see :attr:`LoRAPruneConfig.protect_layers`).

    Raises:
        ConfigError: An unknown preset, a layer index out of range, or protection asked for
            groups without a layer number (CNN channels).
    """
    if protect in (None, "none", "", []):
        return set()
    index = {g.key: layer_index(g.key) for g in groups}
    if any(i is None for i in index.values()):
        raise ConfigError("protect_layers needs decoder layers (group keys like 'model.layers.3.mlp'); "
                          "it is not available for CNN channels")
    n_layers = max(index.values()) + 1
    if protect == "reference":
        layers = set(range(int(n_layers * 0.1))) | {n_layers - 1}
    elif isinstance(protect, str):
        raise ConfigError(f"protect_layers must be null, 'reference' or a list of layer indices, got '{protect}'")
    else:
        layers = {int(i) for i in protect}
        bad = sorted(i for i in layers if not 0 <= i < n_layers)
        if bad:
            raise ConfigError(f"protect_layers {bad} out of range: the model has {n_layers} layers (0-{n_layers - 1})")
    return {k for k, i in index.items() if i in layers}


# ----------------------------------------------------------------------------- pruner
@dataclass
class LoRAPruneConfig:
    """LoRAPrune (compression) settings.

    Attributes:
        init_ratio: Sparsity (fraction of groups) at the start of the schedule.
        target_ratio: Final sparsity.
        warmup_steps: Steps before pruning starts; LoRA warms up here (importance needs B ≠ 0).
        cooldown_steps: Final steps without further pruning.
        prune_freq: Prune every this many steps.
        prune_metric: "lora", "grad" or "magnitude".
        mode: "local" or "global" ranking.
        beta: EMA factor of the importance.
        norm: Per-module normalisation of the importance: "l2" (LoRAPrune) or "sum".
        protect_layers: Decoder layers never pruned: ``None`` (prune all), a list of layer
            indices, or "reference" (LoRAPrune's ``freeze``: the first ``int(0.1·L)`` layers
            and the last one). Protected layers keep their width, so the pruned model has
            per-layer shapes (see :mod:`obliviate.pruning.physical_llm` for saving it).
        prune_kinds: Kinds of groups that may be pruned (``["mlp"]``: MLP channels only, the
            attention heads stay); ``None``: all kinds (attention, mlp, conv).
    """

    init_ratio: float = 0.0
    target_ratio: float = 0.5
    warmup_steps: int = 10
    cooldown_steps: int = 10
    prune_freq: int = 10
    prune_metric: str = "lora"
    mode: str = "local"
    beta: float = 0.9
    norm: str = "l2"
    protect_layers: Any = None
    prune_kinds: Any = None


class LoRAPruner:
    """Drives LoRAPrune inside any training loop: call :meth:`step` after ``backward``.

    With gradient accumulation, call it once per optimizer step (after the last micro-batch,
    before ``zero_grad``); :class:`LoRAPruneCallback` does this for the HF Trainer.

    Args:
        model: The (PEFT-wrapped) model; soft masks are attached immediately.
        total_steps: Number of optimizer steps of the run.
        cfg: Settings.
    """

    def __init__(self, model: nn.Module, total_steps: int, cfg: LoRAPruneConfig | None = None) -> None:
        self.cfg = cfg or LoRAPruneConfig()
        self.model, self.total_steps = model, int(total_steps)
        cubic_sparsity(0, self.total_steps, self.cfg.init_ratio, self.cfg.target_ratio,
                       self.cfg.warmup_steps, self.cfg.cooldown_steps)  # validates the schedule
        self.groups = discover_groups(model)
        self.tracker = ImportanceTracker(self.groups, self.cfg.prune_metric, self.cfg.beta, self.cfg.norm)
        self.masks = GroupMasks(self.groups).attach(model)
        self.kinds = {g.key: g.kind for g in self.groups}
        self.protected = protected_sets(self.groups, self.cfg.protect_layers)
        if self.cfg.prune_kinds is not None:
            kinds = set(self.cfg.prune_kinds)
            unknown = kinds - {"attention", "mlp", "conv"}
            if unknown:
                raise ConfigError(f"prune_kinds {sorted(unknown)} unknown; choose from attention, mlp, conv")
            self.protected |= {g.key for g in self.groups if g.kind not in kinds}

    def step(self, step: int) -> float | None:
        """Update importance (after warm-up for the LoRA metric) and prune on schedule.

        Returns:
            The sparsity applied at this step, or None if no pruning happened.
        """
        cfg = self.cfg
        if cfg.prune_metric == "lora" and step < cfg.warmup_steps:
            return None  # B may still be zero: the estimate is meaningless during warm-up
        self.tracker.update(self.model)
        if not is_prune_step(step, self.total_steps, cfg.prune_freq, cfg.warmup_steps, cfg.cooldown_steps):
            return None
        ratio = cubic_sparsity(step, self.total_steps, cfg.init_ratio, cfg.target_ratio, cfg.warmup_steps, cfg.cooldown_steps)
        if step == last_prune_step(self.total_steps, cfg.cooldown_steps):
            ratio = float(cfg.target_ratio)
        scores = {k: v for k, v in self.tracker.scores.items() if k not in self.protected}
        keep = rank_groups(scores, ratio, cfg.mode, self.kinds, self.masks.keep)
        for key, value in keep.items():
            self.masks.set(key, value)
        return ratio


def loraprune_callback(pruner: LoRAPruner) -> Any:
    """An HF ``TrainerCallback`` calling ``pruner.step`` before each optimizer step."""
    from transformers import TrainerCallback

    class LoRAPruneCallback(TrainerCallback):
        def on_pre_optimizer_step(self, args, state, control, **kwargs):
            pruner.step(int(state.global_step))

    return LoRAPruneCallback()


def element_masks(model: nn.Module, masks: GroupMasks) -> dict[str, torch.Tensor]:
    """Unstructured equivalent of group masks: ``{"<base module>.weight": bool}`` (True = kept).

    Pruned groups zero their rows *and* columns, so for a decoder the masked weights compute
    what the soft-masked model computes (a pruned head's o_proj columns / a pruned channel's
    down_proj column are zero). For CNNs the conv bias and a following BatchNorm shift are not
    covered; use :class:`GroupMasks` there.
    """
    modules = dict(model.named_modules())
    out: dict[str, torch.Tensor] = {}
    for key, gs in masks.groups.items():
        for member in gs.members:
            if member.kind != "weight":
                continue
            w = base_layer(modules[member.name]).weight
            name = member.name + (".base_layer" if hasattr(modules[member.name], "base_layer") else "")
            mask = out.setdefault(f"{name}.weight", torch.ones(w.shape, dtype=torch.bool))
            dropped = member.index[~masks.keep[key]].flatten()
            if member.dim == 0:
                mask[dropped] = False
            else:
                mask[:, dropped] = False
    return out


@PRUNERS.register("loraprune", track=("llm", "vision"), kind="structured")
def loraprune_oneshot(model: nn.Module, *, rate: float, scores: dict[str, torch.Tensor] | None = None,
                      metric: str = "magnitude", mode: str = "local") -> Any:
    """One-shot structured pruning with LoRAPrune groups, as a registered pruner.

    Returns the package's ``PruneResult``: element masks (:func:`element_masks`, attached
    with :func:`~obliviate.pruning.masks.attach_masks`, so they stay enforced in later
    training and save like OMP masks) and ``info["group_masks"]`` (the :class:`GroupMasks`,
    not attached; attach them for PEFT models, whose LoRA delta element masks do not cover,
    or pass them to :func:`~obliviate.pruning.groups.remove_pruned_groups`).

    Args:
        model: HF decoder or CNN.
        rate: Fraction of groups pruned.
        scores: Group importance (e.g. :attr:`ImportanceTracker.scores`); default: ``metric``
            computed from the current weights/gradients.
        metric: Metric used when ``scores`` is None.
        mode: "local" or "global".
    """
    from obliviate.pruning.magnitude import PruneResult
    from obliviate.pruning.masks import attach_masks

    groups = discover_groups(model)
    if scores is None:
        scores = group_importance(model, groups, metric)
    keep = rank_groups(scores, rate, mode, {g.key: g.kind for g in groups})
    gmasks = GroupMasks(groups, keep)
    if gmasks.sparsity() == 0.0:
        warnings.warn(f"loraprune rate={rate} prunes no group; the model is unchanged", stacklevel=2)
    emasks = element_masks(model, gmasks)
    attach_masks(model, emasks)
    return PruneResult(emasks, {"group_sparsity": gmasks.sparsity(), "pruned_groups": gmasks.pruned(),
                                "group_masks": gmasks, "mode": mode})
