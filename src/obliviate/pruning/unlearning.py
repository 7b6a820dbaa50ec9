"""Unlearning mode of LoRAPrune (seed 000): dual-importance structured pruning.

Kept apart from the compression path (:mod:`obliviate.pruning.loraprune`, seed 000's "_ul"
rule): this module only *reads* that module's importance functions.

1. :func:`dual_sensitivity` runs a **forget pass** and a **retain pass** separately (all
   parameter gradients are cleared before, between and after them; the gradients a training
   loop had accumulated are stashed and restored, and no training optimizer is touched), each
   with gradient accumulation over its micro-batches. It yields ``s_forget`` and ``s_retain``
   per group (per-group vectors ``[n_groups]``, never per weight), each normalised per module.
2. :func:`compute_dual_sensitivity` gives ``S = s_f / (s_r + ε)`` per group.
3. :func:`unlearning_prune` prunes the groups with the highest ``S`` (important to the forget
   set, unimportant to the retain set), with a retain-performance safeguard.

**Threshold semantics.** A group is *eligible* only if its forget share
``s_f / (s_f + s_r) = S / (1 + S)`` is at least ``unlearning_threshold``; the default 0.5 means
"matters at least as much to the forget set as to the retain set". Among eligible groups the
highest ``S`` are pruned, at most ``floor(ratio · n_groups)`` per group set (and at least one
group always survives per set).

**LoRA warm-up.** The LoRA importance estimate is uninformative while ``B = 0``;
:func:`lora_warmup` trains the adapters for a few steps with its *own* optimizer (separate
from the training optimizer), so importance estimation never shares optimizer state with
training.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from itertools import cycle, islice
from typing import Any

import torch
from torch import nn

from obliviate.errors import ConfigError
from obliviate.progress import progress
from obliviate.pruning.groups import GroupMasks, GroupSet, discover_groups
from obliviate.pruning.loraprune import group_importance

LossFn = Callable[[nn.Module, Any], torch.Tensor]


@dataclass
class UnlearningPruneConfig:
    """Settings of dual-importance unlearning pruning (seed 000 ``LoraConfig`` fields + extras).

    Attributes:
        unlearning_threshold: Minimum forget share ``S/(1+S)`` for a group to be prunable.
        unlearning_epsilon: ε in ``S = s_f / (s_r + ε)``.
        min_retain_performance: Fraction of the original retain metric that must survive; a
            prune step breaking it is undone.
        forget_retain_ratio: Forget micro-batches per retain micro-batch in the sensitivity
            passes (1.0 = as many retain as forget micro-batches).
        ratio: Maximum fraction of groups pruned per group set.
        prune_metric: "lora", "grad", "taylor" or "magnitude" (magnitude cannot tell forget from
            retain). "taylor" scores a group by the squared first-order effect of removing it,
            ``(dL/dg)^2`` of a gate ``g = 1`` on the group's output, summed over micro-batches
            (Molchanov et al., CVPR 2019); no weight gradients are needed.
        step_size: Groups pruned per safeguarded step.
        higher_is_better: Direction of the retain metric returned by ``retain_eval``.
    """

    unlearning_threshold: float = 0.5
    unlearning_epsilon: float = 1e-6
    min_retain_performance: float = 0.9
    forget_retain_ratio: float = 1.0
    ratio: float = 0.1
    prune_metric: str = "lora"
    step_size: int = 1
    higher_is_better: bool = True

    def __post_init__(self) -> None:
        if not 0.0 <= self.unlearning_threshold <= 1.0:
            raise ConfigError(f"unlearning_threshold must be in [0, 1], got {self.unlearning_threshold}")
        if self.unlearning_epsilon <= 0:
            raise ConfigError(f"unlearning_epsilon must be > 0, got {self.unlearning_epsilon}")
        if not 0.0 <= self.min_retain_performance <= 1.0:
            raise ConfigError(f"min_retain_performance must be in [0, 1], got {self.min_retain_performance}")
        if self.forget_retain_ratio <= 0:
            raise ConfigError(f"forget_retain_ratio must be > 0, got {self.forget_retain_ratio}")
        if not 0.0 <= self.ratio < 1.0:
            raise ConfigError(f"ratio must be in [0, 1), got {self.ratio}")
        if self.prune_metric not in ("lora", "grad", "taylor", "magnitude"):
            raise ConfigError(f"prune_metric must be one of lora, grad, taylor, magnitude; got '{self.prune_metric}'")
        if self.step_size < 1:
            raise ConfigError(f"step_size must be >= 1, got {self.step_size}")


# ----------------------------------------------------------------------------- sensitivities
def _clear_grads(model: nn.Module) -> None:
    for p in model.parameters():
        p.grad = None


class _Gate:
    """A float gate per group (all ones) multiplying the group's output; its gradient is the
    first-order effect of removing each group: ``dL/dg_j = sum over the group's outputs``.

    The gate sits where the group ends: the input columns of the ``dim=1`` member (attention
    ``o_proj`` / MLP ``down_proj``), else the output channels of the last ``dim=0`` member (a
    conv, or the BatchNorm after it, so a gated channel outputs exactly 0 when g = 0).
    """

    def __init__(self, gs: GroupSet, modules: dict[str, nn.Module]) -> None:
        from obliviate.pruning.groups import _CHANNELS_FIRST, base_layer

        cols = [m for m in gs.members if m.dim == 1]
        member = cols[0] if cols else [m for m in gs.members if m.dim == 0][-1]
        self.module = modules[member.name]
        base = base_layer(self.module)
        size = base.weight.shape[1] if member.dim == 1 else base.weight.shape[0]
        lookup = torch.full((size,), gs.n_groups, dtype=torch.long)  # index n_groups -> constant 1
        for j in range(gs.n_groups):
            lookup[member.index[j].flatten()] = j
        self.lookup = lookup
        self.channels_first = isinstance(base, _CHANNELS_FIRST)
        self.gate = torch.ones(gs.n_groups, requires_grad=True)
        self.grad_sq = torch.zeros(gs.n_groups)
        hook = self._pre if member.dim == 1 else self._post
        self.handle = (self.module.register_forward_pre_hook(hook) if member.dim == 1 else self.module.register_forward_hook(hook))

    def _scale(self, x: torch.Tensor) -> torch.Tensor:
        f = torch.cat([self.gate, self.gate.new_ones(1)])[self.lookup].to(device=x.device, dtype=x.dtype)
        return x * (f.view(1, -1, *([1] * (x.dim() - 2))) if self.channels_first else f)

    def _pre(self, _module: nn.Module, args: tuple) -> tuple:
        return (self._scale(args[0]), *args[1:])

    def _post(self, _module: nn.Module, _args: tuple, out: torch.Tensor) -> torch.Tensor:
        return self._scale(out)


def taylor_pass(model: nn.Module, groups: list[GroupSet], batches: Iterable[Any], loss_fn: LossFn) -> dict[str, torch.Tensor]:
    """Group-Taylor importance: ``sum over micro-batches of (dL_b/dg)^2`` per group.

    Weight gradients are not computed (``requires_grad`` is switched off and restored), so
    the pass never touches ``.grad`` of any parameter.

    Returns:
        ``{set key: [n_groups]}`` (each set normalised to sum 1).
    """
    modules = dict(model.named_modules())
    flags = {p: p.requires_grad for p in model.parameters()}
    gates = {gs.key: _Gate(gs, modules) for gs in groups}
    try:
        for p in flags:
            p.requires_grad_(False)
        for batch in progress(batches, desc="group-Taylor sensitivity pass", unit="batch"):
            loss = loss_fn(model, batch)
            if not torch.isfinite(loss):
                raise ConfigError(f"non-finite loss {float(loss)} in a sensitivity pass")
            grads = torch.autograd.grad(loss, [g.gate for g in gates.values()], allow_unused=True)
            for g, grad in zip(gates.values(), grads):
                if grad is not None:
                    g.grad_sq += grad.detach().float().pow(2)
    finally:
        for g in gates.values():
            g.handle.remove()
        for p, flag in flags.items():
            p.requires_grad_(flag)
    return {k: g.grad_sq / g.grad_sq.sum().clamp_min(1e-30) for k, g in gates.items()}


def sensitivity_pass(model: nn.Module, groups: list[GroupSet], batches: Iterable[Any], loss_fn: LossFn,
                     metric: str = "lora") -> dict[str, torch.Tensor]:
    """Per-group importance of one data set, accumulating gradients over ``batches``.

    Gradients are cleared first; the loss of each micro-batch is divided by their number
    (gradient accumulation = one large batch). The caller clears them afterwards.
    ``metric="taylor"``: :func:`taylor_pass` (per-micro-batch squared gate gradients).

    Returns:
        ``{set key: [n_groups]}`` (each module's scores normalised to sum 1).
    """
    batches = list(batches)
    if not batches:
        raise ConfigError("sensitivity pass got no batches (empty forget or retain data)")
    if metric == "taylor":
        return taylor_pass(model, groups, batches, loss_fn)
    _clear_grads(model)
    for batch in progress(batches, desc="sensitivity pass", unit="batch"):
        loss = loss_fn(model, batch) / len(batches)
        if not torch.isfinite(loss):
            raise ConfigError(f"non-finite loss {float(loss)} in a sensitivity pass")
        loss.backward()
    return group_importance(model, groups, metric, norm="sum")  # the dual ratio's benchmarked normalisation


def _scoring_mode(model: nn.Module) -> None:
    """Eval mode (no dropout, BatchNorm running statistics), except that layers with gradient
    checkpointing enabled (HF ``GradientCheckpointingLayer``: active only in train mode) keep
    checkpointing, so the sensitivity passes need no more activation memory than training."""
    model.eval()
    for module in model.modules():
        if getattr(module, "gradient_checkpointing", False) is True:
            module.training = True  # this module only; its dropout/attention children stay in eval


def dual_sensitivity(model: nn.Module, forget_batches: Sequence[Any], retain_batches: Sequence[Any], loss_fn: LossFn,
                     cfg: UnlearningPruneConfig | None = None, groups: list[GroupSet] | None = None,
                     ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Separate forget and retain passes -> ``(s_forget, s_retain, S)`` per group.

    The model is put in eval mode for the passes (deterministic dropout) and restored; the
    parameters' existing ``.grad`` are stashed and restored, so a training loop's accumulated
    gradients and optimizer are untouched. Retain micro-batches used:
    ``ceil(len(forget_batches) / forget_retain_ratio)`` (cycled if fewer are given).

    Args:
        model: The model (PEFT-wrapped for ``prune_metric="lora"``).
        forget_batches: Micro-batches of the forget set.
        retain_batches: Micro-batches of the retain set.
        loss_fn: ``loss_fn(model, batch) -> scalar`` (e.g. mean NLL via a model adapter).
        cfg: Settings (``prune_metric``, ``unlearning_epsilon``, ``forget_retain_ratio``).
        groups: Group sets (default: :func:`discover_groups`).
    """
    cfg = cfg or UnlearningPruneConfig()
    groups = groups or discover_groups(model)
    forget = list(forget_batches)
    retain_all = list(retain_batches)
    if not retain_all:
        raise ConfigError("dual sensitivity needs retain batches")
    n_retain = max(1, math.ceil(len(forget) / cfg.forget_retain_ratio))
    retain = list(islice(cycle(retain_all), n_retain))
    stash = {p: p.grad for p in model.parameters()}
    was_training = model.training
    _scoring_mode(model)
    try:
        s_f = sensitivity_pass(model, groups, forget, loss_fn, cfg.prune_metric)
        _clear_grads(model)  # forget gradients must not leak into the retain pass
        s_r = sensitivity_pass(model, groups, retain, loss_fn, cfg.prune_metric)
    finally:
        _clear_grads(model)
        for p, g in stash.items():
            p.grad = g
        model.train(was_training)
    dual = {g.key: compute_dual_sensitivity(g, s_f[g.key], s_r[g.key], cfg.unlearning_epsilon) for g in groups}
    return s_f, s_r, dual


def compute_dual_sensitivity(layer: GroupSet | str | None, forget_sensitivity: torch.Tensor,
                             retain_sensitivity: torch.Tensor, epsilon: float = 1e-6) -> torch.Tensor:
    """Unlearning importance ``S = s_forget / (s_retain + ε)`` per group.

    Args:
        layer: The group set (or its key) the scores belong to; used to check shapes and in
            error messages.
        forget_sensitivity: ``[n_groups]`` forget-set importance (non-negative).
        retain_sensitivity: ``[n_groups]`` retain-set importance (non-negative).
        epsilon: Keeps the ratio finite where the retain importance is zero.

    Returns:
        ``[n_groups]`` float tensor.

    Raises:
        ConfigError: Shapes differ, do not match ``layer``, or ``epsilon <= 0``.
    """
    name = layer.key if isinstance(layer, GroupSet) else str(layer)
    s_f = torch.as_tensor(forget_sensitivity, dtype=torch.float32)
    s_r = torch.as_tensor(retain_sensitivity, dtype=torch.float32)
    if s_f.shape != s_r.shape:
        raise ConfigError(f"'{name}': forget sensitivity {tuple(s_f.shape)} and retain sensitivity "
                          f"{tuple(s_r.shape)} differ in shape")
    if isinstance(layer, GroupSet) and s_f.shape != (layer.n_groups,):
        raise ConfigError(f"'{name}': expected per-group sensitivities of shape ({layer.n_groups},), got {tuple(s_f.shape)}")
    if epsilon <= 0:
        raise ConfigError(f"epsilon must be > 0, got {epsilon}")
    return s_f / (s_r.clamp_min(0) + epsilon)


class DualSensitivityTracker:
    """EMA of ``s_forget`` and ``s_retain`` over repeated dual passes (per group, β = 0.9).

    For iterative unlearning pruning inside a training loop: call :meth:`update` every few
    optimizer steps (it never touches the training gradients), then :meth:`dual`.

    Args:
        groups: Group sets to score.
        cfg: Settings (metric, ε, forget/retain ratio).
        beta: EMA factor; the first update is taken as is.
    """

    def __init__(self, groups: list[GroupSet], cfg: UnlearningPruneConfig | None = None, beta: float = 0.9) -> None:
        if not 0.0 <= beta < 1.0:
            raise ConfigError(f"EMA beta must be in [0, 1), got {beta}")
        self.groups, self.cfg, self.beta = groups, cfg or UnlearningPruneConfig(), beta
        self.s_forget: dict[str, torch.Tensor] = {}
        self.s_retain: dict[str, torch.Tensor] = {}

    def _fold(self, store: dict[str, torch.Tensor], new: dict[str, torch.Tensor]) -> None:
        for key, value in new.items():
            prev = store.get(key)
            store[key] = value if prev is None else self.beta * prev + (1 - self.beta) * value

    def update(self, model: nn.Module, forget_batches: Sequence[Any], retain_batches: Sequence[Any],
               loss_fn: LossFn) -> dict[str, torch.Tensor]:
        """Run the two passes, fold them into the EMAs; returns the current dual scores."""
        s_f, s_r, _ = dual_sensitivity(model, forget_batches, retain_batches, loss_fn, self.cfg, self.groups)
        self._fold(self.s_forget, s_f)
        self._fold(self.s_retain, s_r)
        return self.dual()

    def dual(self) -> dict[str, torch.Tensor]:
        """``{set key: s_f / (s_r + ε)}`` from the smoothed sensitivities."""
        return {g.key: compute_dual_sensitivity(g, self.s_forget[g.key], self.s_retain[g.key], self.cfg.unlearning_epsilon)
                for g in self.groups if g.key in self.s_forget}


# ----------------------------------------------------------------------------- pruning
@dataclass
class UnlearningPruneResult:
    """Outcome of :func:`unlearning_prune`.

    Attributes:
        masks: The group masks (attached to the model).
        pruned: Pruned group indices per set.
        undone: Steps undone by the safeguard, each ``[(set key, group), ...]``.
        baseline: Retain metric before pruning (None without ``retain_eval``).
        final: Retain metric after pruning (None without ``retain_eval``).
        candidates: Number of eligible groups.
    """

    masks: GroupMasks
    pruned: dict[str, list[int]]
    undone: list[list[tuple[str, int]]] = field(default_factory=list)
    baseline: float | None = None
    final: float | None = None
    candidates: int = 0

    @property
    def changed(self) -> bool:
        """True if at least one group is pruned."""
        return any(self.pruned.values())


def _ok(value: float, baseline: float, frac: float, higher_is_better: bool) -> bool:
    if higher_is_better:
        return value >= frac * baseline
    return value <= baseline / max(frac, 1e-12)


def unlearning_prune(model: nn.Module, dual_sensitivity_dict: dict[str, torch.Tensor], ratio: float,
                     unlearning_threshold: float = 0.5, *, retain_eval: Callable[[nn.Module], float] | None = None,
                     min_retain_performance: float = 0.9, step_size: int = 1, higher_is_better: bool = True,
                     masks: GroupMasks | None = None) -> UnlearningPruneResult:
    """Prune the groups that matter most to the forget set and least to the retain set.

    Eligible groups (forget share ``S/(1+S) >= unlearning_threshold``) are pruned in order of
    decreasing ``S``, at most ``floor(ratio · n_groups)`` per set, ``step_size`` groups per
    step. With ``retain_eval``, the retain metric is measured before pruning and after every
    step; a step that leaves it below ``min_retain_performance`` × the original (or, for a
    lower-is-better metric, above original / ``min_retain_performance``) is undone, its groups
    are skipped, and the next candidates are tried until the budget or the candidates run out.

    Args:
        model: The model whose groups the dict describes (soft masks are attached to it).
        dual_sensitivity_dict: ``{set key: S [n_groups]}`` from :func:`compute_dual_sensitivity`.
        ratio: Maximum fraction of groups pruned per set, in ``[0, 1)``.
        unlearning_threshold: Minimum forget share for a group to be pruned.
        retain_eval: ``retain_eval(model) -> float``, a positive metric (retain accuracy, or a
            retain loss with ``higher_is_better=False``); None = no safeguard.
        min_retain_performance: Fraction of the original retain metric to keep.
        step_size: Groups per safeguarded step.
        higher_is_better: Direction of ``retain_eval``'s metric.
        masks: Existing group masks to extend (default: new masks for all groups of ``model``).

    Returns:
        :class:`UnlearningPruneResult`; warns if nothing was pruned.
    """
    UnlearningPruneConfig(unlearning_threshold=unlearning_threshold, min_retain_performance=min_retain_performance,
                          ratio=ratio, step_size=step_size)  # validates the values
    baseline = float(retain_eval(model)) if retain_eval is not None else None
    if baseline is not None and not baseline > 0:
        raise ConfigError(f"retain_eval returned {baseline}; the safeguard compares fractions of it, so it must be a "
                          "positive metric (accuracy, or a loss with higher_is_better=False)")
    fresh = masks is None
    if masks is None:
        masks = GroupMasks(discover_groups(model))  # attached after validation
    unknown = [k for k in dual_sensitivity_dict if k not in masks.groups]
    if unknown:
        raise ConfigError(f"dual sensitivity keys {unknown} are not group sets of the model; known: {list(masks.groups)}")
    candidates: list[tuple[float, str, int]] = []
    budget: dict[str, int] = {}
    for key, scores in dual_sensitivity_dict.items():
        s = torch.as_tensor(scores, dtype=torch.float32).cpu()
        gs = masks.groups[key]
        if s.shape != (gs.n_groups,):
            raise ConfigError(f"'{key}': expected {gs.n_groups} scores, got shape {tuple(s.shape)}")
        keep = masks.keep[key]
        already = int((~keep).sum())
        budget[key] = min(int(math.floor(ratio * gs.n_groups + 1e-9)), gs.n_groups - 1) - already
        share = s / (1.0 + s)  # forget share s_f / (s_f + s_r)
        for i in range(gs.n_groups):
            if keep[i] and float(share[i]) >= unlearning_threshold:
                candidates.append((float(s[i]), key, i))
    candidates.sort(key=lambda c: -c[0])  # stable: ties keep set/group order
    undone: list[list[tuple[str, int]]] = []
    if fresh:
        masks.attach(model)
    queue = list(candidates)
    while queue:
        step: list[tuple[str, int]] = []
        while queue and len(step) < step_size:
            _, key, i = queue.pop(0)
            if budget[key] - sum(k == key for k, _ in step) > 0:
                step.append((key, i))
        if not step:
            break
        saved = masks.state()
        for key, i in step:
            keep = masks.keep[key].clone()
            keep[i] = False
            masks.set(key, keep)
        if baseline is not None and not _ok(float(retain_eval(model)), baseline, min_retain_performance,  # type: ignore[misc]
                                            higher_is_better):
            masks.load_state(saved)  # undo: the step broke the retain safeguard; try the next candidates
            undone.append(step)
            continue
        for key, _ in step:
            budget[key] -= 1
    final = float(retain_eval(model)) if retain_eval is not None else None
    result = UnlearningPruneResult(masks, {k: v for k, v in masks.pruned().items() if k in dual_sensitivity_dict},
                                   undone, baseline, final, len(candidates))
    if not result.changed:
        warnings.warn(f"unlearning_prune pruned no group ({len(candidates)} eligible at threshold "
                      f"{unlearning_threshold}, {len(undone)} steps undone by the retain safeguard); the model is "
                      "unchanged", stacklevel=2)
    return result


def lora_warmup(model: nn.Module, batches: Iterable[Any], loss_fn: LossFn, steps: int, lr: float = 1e-3) -> float:
    """Train the trainable (LoRA) parameters for ``steps`` steps with a dedicated AdamW.

    The optimizer is created here and discarded, so the importance estimation never shares
    state with the training optimizer. Gradients are cleared before and after.

    Returns:
        The last loss.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ConfigError("lora_warmup: the model has no trainable parameters (apply LoRA first)")
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    it = cycle(list(batches))
    last = math.nan
    _clear_grads(model)
    for _ in progress(range(int(steps)), desc="LoRA warm-up", unit="step"):
        loss = loss_fn(model, next(it))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        last = float(loss.detach())
    _clear_grads(model)
    return last


def dual_importance_prune(model: nn.Module, forget_batches: Sequence[Any], retain_batches: Sequence[Any],
                          loss_fn: LossFn, cfg: UnlearningPruneConfig | None = None,
                          retain_eval: Callable[[nn.Module], float] | None = None) -> UnlearningPruneResult:
    """Convenience: :func:`dual_sensitivity` then :func:`unlearning_prune` with ``cfg``."""
    cfg = cfg or UnlearningPruneConfig()
    groups = discover_groups(model)
    _, _, dual = dual_sensitivity(model, forget_batches, retain_batches, loss_fn, cfg, groups)
    masks = GroupMasks(groups).attach(model)
    return unlearning_prune(model, dual, cfg.ratio, cfg.unlearning_threshold, retain_eval=retain_eval,
                            min_retain_performance=cfg.min_retain_performance, step_size=cfg.step_size,
                            higher_is_better=cfg.higher_is_better, masks=masks)
