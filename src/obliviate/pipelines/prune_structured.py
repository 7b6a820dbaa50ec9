"""Structured (group) pruning jobs shared by the tracks: dual-importance unlearning pruning.

:func:`dual_prune` runs the seed-000 chain on any model :func:`~obliviate.pruning.groups.discover_groups`
understands (HF decoders, CNNs): optional LoRA warm-up (``prune_metric=lora``), separate forget
and retain sensitivity passes, :func:`~obliviate.pruning.unlearning.unlearning_prune` with the
retain safeguard, then the pruned groups are *baked* into the weights (zeroed rows/columns,
conv bias and BatchNorm affine) and kept zero by element masks (so later training, LoRA merges
and ``save_pretrained`` keep them pruned). The LoRA adapters used for scoring are discarded.
:func:`vision_loraprune` (compression) additionally removes pruned conv channels physically
where safe (:mod:`obliviate.pruning.physical_cnn`).
:func:`vision_unlearning_prune` is the vision-track entry (``obliviate unlearn ... pruning=unlearning_prune``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from obliviate.errors import ConfigError
from obliviate.pipelines.common import timer
from obliviate.pruning.groups import GroupMasks, base_layer, discover_groups
from obliviate.pruning.loraprune import element_masks
from obliviate.pruning.masks import attach_masks
from obliviate.pruning.unlearning import UnlearningPruneConfig, dual_sensitivity, lora_warmup, unlearning_prune

log = logging.getLogger(__name__)

LossFn = Callable[[nn.Module, Any], torch.Tensor]
CONFIG_KEYS = ("unlearning_threshold", "unlearning_epsilon", "min_retain_performance", "forget_retain_ratio", "ratio",
               "prune_metric", "step_size")


@torch.no_grad()
def mean_loss(model: nn.Module, batches: Sequence[Any], loss_fn: LossFn) -> float:
    """Mean of ``loss_fn`` over ``batches`` in eval mode (mode restored)."""
    was = model.training
    model.eval()
    out = float(sum(float(loss_fn(model, b)) for b in batches) / max(len(batches), 1))
    model.train(was)
    return out


def bake_masks(model: nn.Module, masks: GroupMasks) -> dict[str, torch.Tensor]:
    """Zero the pruned groups in the weights and attach element masks that keep them zero.

    Rows/columns of weight members are zeroed (:func:`element_masks`); for output-channel
    members the bias is zeroed too and a ``bn`` member's affine weight and bias are zeroed, so
    a pruned conv channel outputs exactly 0. The soft-mask hooks stay attached.

    Returns:
        The element masks (``{"<module>.weight": bool}``, True = kept), attached to ``model``.
    """
    modules = dict(model.named_modules())
    emasks = element_masks(model, masks)
    with torch.no_grad():
        for key, gs in masks.groups.items():
            dropped_groups = ~masks.keep[key]
            if not bool(dropped_groups.any()):
                continue
            for member in gs.members:
                mod = base_layer(modules[member.name])
                idx = member.index[dropped_groups].flatten()
                if member.dim == 0:
                    mod.weight[idx] = 0
                    if getattr(mod, "bias", None) is not None:
                        mod.bias[idx] = 0
                else:
                    mod.weight[:, idx] = 0
    attach_masks(model, emasks)
    return emasks


def _map_keys(scores: dict[str, torch.Tensor], masks: GroupMasks) -> dict[str, torch.Tensor]:
    out = {}
    for key in masks.groups:
        match = [k for k in scores if k == key or k.endswith("." + key)]
        if len(match) != 1:
            raise ConfigError(f"cannot match group set '{key}' to the scored sets ({len(match)} candidates)")
        out[key] = scores[match[0]]
    return out


def dual_prune(model: nn.Module, forget_batches: Sequence[Any], retain_batches: Sequence[Any], loss_fn: LossFn,
               opts: dict[str, Any], retain_eval: Callable[[nn.Module], float] | None = None, *,
               higher_is_better: bool = True) -> tuple[nn.Module, dict[str, Any]]:
    """Dual-importance unlearning pruning of ``model`` (plain, not PEFT-wrapped).

    Args:
        model: HF decoder or CNN; pruned in place.
        forget_batches: Micro-batches of the forget set (sensitivity pass, LoRA warm-up).
        retain_batches: Micro-batches of the retain set.
        loss_fn: ``loss_fn(model, batch) -> scalar``.
        opts: The ``pruning`` config (``UnlearningPruneConfig`` fields, ``lora_r``,
            ``lora_alpha``, ``lora_warmup_steps``, ``lr``).
        retain_eval: Retain metric for the safeguard (None = no safeguard).
        higher_is_better: Direction of ``retain_eval``.

    Returns:
        ``(model, record)``; the record holds the pruned groups and the forget/retain loss
        before and after pruning.
    """
    cfg = UnlearningPruneConfig(**{k: opts[k] for k in CONFIG_KEYS if opts.get(k) is not None},
                                higher_is_better=higher_is_better)
    record: dict[str, Any] = {"method": "unlearning_prune", **{k: getattr(cfg, k) for k in CONFIG_KEYS}}
    before = {"forget": mean_loss(model, forget_batches, loss_fn), "retain": mean_loss(model, retain_batches, loss_fn)}
    trainable = {n: p.requires_grad for n, p in model.named_parameters()}
    with timer() as t:
        work = model
        if cfg.prune_metric == "lora":
            from obliviate.models.lora import apply_lora

            work = apply_lora(model, r=int(opts.get("lora_r", 8)), alpha=float(opts.get("lora_alpha", 16)))
            steps = int(opts.get("lora_warmup_steps", 10))
            if steps < 1:
                raise ConfigError("prune_metric=lora needs pruning.lora_warmup_steps >= 1 (LoRA B starts at 0)")
            mixed = [b for pair in zip(forget_batches, retain_batches) for b in pair] or list(forget_batches)
            record["lora_warmup_loss"] = lora_warmup(work, mixed, loss_fn, steps, float(opts.get("lr", 1e-3)))
        elif cfg.prune_metric == "grad":
            for p in model.parameters():
                p.requires_grad_(True)
        s_f, s_r, dual = dual_sensitivity(work, forget_batches, retain_batches, loss_fn, cfg, discover_groups(work))
        if work is not model:
            model = work.unload()  # discard the scoring adapters: the pruned model is the original minus groups
        for n, p in model.named_parameters():  # PEFT froze the base weights; the method trains them again
            p.requires_grad_(trainable.get(n, p.requires_grad))
        masks = GroupMasks(discover_groups(model)).attach(model)
        res = unlearning_prune(model, _map_keys(dual, masks), cfg.ratio, cfg.unlearning_threshold, retain_eval=retain_eval,
                               min_retain_performance=cfg.min_retain_performance, step_size=cfg.step_size,
                               higher_is_better=higher_is_better, masks=masks)
        bake_masks(model, masks)
    after = {"forget": mean_loss(model, forget_batches, loss_fn), "retain": mean_loss(model, retain_batches, loss_fn)}
    n_groups = {k: int(v.numel()) for k, v in masks.keep.items()}
    record.update({
        "pruned_groups": res.pruned,
        "n_pruned": sum(len(v) for v in res.pruned.values()),
        "n_groups": sum(n_groups.values()),
        "group_sparsity": masks.sparsity(),
        "candidates": res.candidates,
        "n_undone_steps": len(res.undone),
        "undone_steps": [[list(s) for s in step] for step in res.undone[:20]],  # first 20
        "retain_metric": {"before": res.baseline, "after": res.final, "higher_is_better": higher_is_better},
        "loss": {"before": before, "after": after, "delta": {k: after[k] - before[k] for k in after}},
        "dual_sensitivity": {k: [round(float(x), 6) for x in v] for k, v in _map_keys(dual, masks).items()},
        "seconds": t["s"],
    })
    log.info("unlearning_prune: %d/%d groups pruned; forget loss %.4f -> %.4f, retain loss %.4f -> %.4f", record["n_pruned"],
             record["n_groups"], before["forget"], after["forget"], before["retain"], after["retain"])
    return model, record


def take_batches(dataset: Any, collate: Callable, batch_size: int, limit: int | None, seed: int = 0) -> list[Any]:
    """Up to ``limit`` shuffled (seeded) micro-batches of ``dataset``."""
    from torch.utils.data import DataLoader

    g = torch.Generator().manual_seed(int(seed))
    out = []
    for batch in DataLoader(dataset, batch_size=int(batch_size), shuffle=True, generator=g, collate_fn=collate):
        out.append(batch)
        if limit is not None and len(out) >= int(limit):
            break
    return out


def retain_batches_for(forget_batches: Sequence[Any], retain: Any, collate: Callable, batch_size: int, ratio: float,
                       seed: int) -> list[Any]:
    """Retain micro-batches for the sensitivity passes: ``ceil(n_forget / forget_retain_ratio)``."""
    return take_batches(retain, collate, batch_size, max(1, math.ceil(len(forget_batches) / float(ratio))), seed + 1)


# ----------------------------------------------------------------------------- vision
def _ce(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    device = next(model.parameters()).device
    return nn.functional.cross_entropy(model(batch["pixel_values"].to(device)).float(), batch["labels"].to(device))


def vision_unlearning_prune(model: nn.Module, split: Any, opts: dict[str, Any], seed: int) -> tuple[nn.Module, dict[str, Any]]:
    """``pruning=unlearning_prune`` on a CNN: forget/retain = the run's forget selection.

    The safeguard metric is the accuracy on (up to ``retain_eval_samples``) retain samples.
    """
    import numpy as np

    from obliviate.data import stack_collate
    from obliviate.metrics.classification import accuracy
    from obliviate.pipelines.vision_stages import predict

    if str(opts.get("prune_metric", "lora")) == "lora":
        log.info("unlearning_prune on a CNN: LoRA adapters on the convolutions score the channels")
    bs = int(opts.get("batch_size", 64))
    forget = split.forget.with_augment(False)
    retain = split.retain.with_augment(False)
    fb = take_batches(forget, stack_collate, bs, opts.get("max_forget_batches"), seed)
    rb = retain_batches_for(fb, retain, stack_collate, bs, float(opts.get("forget_retain_ratio", 1.0)), seed)
    n = min(int(opts.get("retain_eval_samples", 256)), len(retain))
    probe = retain.subset(np.random.default_rng(seed).choice(len(retain), n, replace=False)) if hasattr(retain, "subset") else retain

    def retain_eval(m: nn.Module) -> float:
        pred = predict(m, probe)
        return max(float(accuracy(pred["pred"], pred["label"])), 1e-6)

    model, record = dual_prune(model, fb, rb, _ce, opts, retain_eval, higher_is_better=True)
    record["retain_metric"]["name"] = "retain_accuracy"
    model.eval()
    return model, record


@torch.no_grad()
def _cnn_latency_ms(model: nn.Module, x: torch.Tensor, repeats: int) -> float:
    import statistics
    import time

    model.eval()
    model(x)
    times = []
    for _ in range(max(int(repeats), 1)):
        t0 = time.perf_counter()
        model(x)
        times.append(1000.0 * (time.perf_counter() - t0))
    return float(statistics.median(times))


def _cnn_snapshot(model: nn.Module, x: torch.Tensor, repeats: int) -> dict[str, Any]:
    from obliviate.pruning import param_counts

    return {**param_counts(model), "latency_ms": _cnn_latency_ms(model, x, repeats)}


def vision_loraprune(model: nn.Module, data: Any, opts: dict[str, Any], seed: int) -> tuple[nn.Module, dict[str, Any]]:
    """LoRAPrune of a CNN's conv output channels on ``data.train`` (``obliviate prune pruning=loraprune``).

    LoRA fine-tuning with soft channel masks, LoRA-gradient importance EMA and the cubic
    schedule, then the adapters are merged and the pruned channels are zeroed (conv weight and
    bias, BatchNorm affine) and kept zero by element masks (:func:`bake_masks`). Then, unless
    ``pruning.remove=false``, the pruned channels are **removed physically** where that is safe
    (:func:`~obliviate.pruning.physical_cnn.remove_conv_channels`): smaller convs, sliced
    BatchNorms and consumers (next conv's input channels, the Linear after a flatten), so the
    parameter count and latency drop. Channels feeding a residual addition (ResNet blocks'
    ``bn2`` / shortcut outputs, the stem), a concatenation or a grouped conv stay zeroed and
    masked. The element masks and soft group masks are re-attached with the new shapes.

    Returns:
        ``(model, info)``; ``info["removed"]`` is True when any channel was removed and
        ``info["removal"]`` is the removal report (``removed_sets``, ``skipped_sets`` with the
        reasons, ``params_before`` / ``params_after``, the new module sizes ``shapes`` and
        the kept indices ``kept``, see :func:`~obliviate.pruning.physical_cnn.expand_state_dict`).
        ``info["original"]`` / ``info["pruned"]`` are the params / nonzero params / latency
        snapshots of the model before and after (after removal).
    """
    from itertools import cycle

    from torch.utils.data import DataLoader

    from obliviate.data import stack_collate
    from obliviate.models.lora import apply_lora
    from obliviate.pipelines.prune_train import loraprune_config, train_loraprune

    steps, repeats, bs = int(opts.get("steps", 60)), int(opts.get("latency_repeats", 10)), int(opts.get("batch_size", 64))
    g = torch.Generator().manual_seed(int(seed))
    loader = DataLoader(data.train.with_augment(data.augment_train), batch_size=bs, shuffle=True, generator=g, collate_fn=stack_collate)
    probe = next(iter(DataLoader(data.test.with_augment(False), batch_size=bs, collate_fn=stack_collate)))["pixel_values"]
    before = _cnn_snapshot(model, probe, repeats)
    pcfg = loraprune_config(opts, steps)
    trainable = {n: p.requires_grad for n, p in model.named_parameters()}
    peft = apply_lora(model, r=int(opts.get("lora_r", 8)), alpha=float(opts.get("lora_alpha", 16)),
                      dropout=float(opts.get("lora_dropout") or 0.0))
    if pcfg.prune_metric == "grad":
        for prm in peft.parameters():
            prm.requires_grad_(True)
    pruner, history, seconds = train_loraprune(peft, cycle(loader), _ce, steps, opts, pcfg)
    model = peft.merge_and_unload()
    for n, prm in model.named_parameters():
        prm.requires_grad_(trainable.get(n, True))
    masks = pruner.masks.rebind(model)
    bake_masks(model, masks)
    pruned = masks.pruned()  # before removal: removed sets leave the soft masks
    n_groups, group_sparsity = sum(int(v.numel()) for v in masks.keep.values()), masks.sparsity()
    removal: dict[str, Any] = {"removed": False}
    if opts.get("remove", True):
        from obliviate.pruning.physical_cnn import remove_conv_channels

        removal = remove_conv_channels(model, masks)
        for key, reason in removal["skipped_sets"].items():
            log.info("conv channels of '%s' kept zeroed and masked, not removed: %s", key, reason)
    model.eval()
    after = _cnn_snapshot(model, probe, repeats)
    info = {"method": "loraprune", "pruned_groups": pruned, "n_pruned": sum(len(v) for v in pruned.values()),
            "n_groups": n_groups, "group_sparsity": group_sparsity, "history": history,
            "removed": bool(removal["removed"]), "removal": removal, "seconds": seconds, "original": before, "pruned": after}
    return model, info


__all__ = ["bake_masks", "dual_prune", "mean_loss", "retain_batches_for", "take_batches", "vision_loraprune", "vision_unlearning_prune"]
