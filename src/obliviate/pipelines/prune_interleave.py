"""Dual-importance pruning interleaved with unlearning training (``pruning.interleave_every=N``).

After the initial ``pruning=unlearning_prune`` step, :class:`InterleavedPruneCallback` re-scores
the groups every N optimizer steps of the unlearning run (separate forget / retain passes on
the *current* model; the trainer's gradients and optimizer are untouched) and prunes further:
the budget per set grows by ``interleave_ratio_step`` each time, up to ``interleave_max_ratio``.
The safeguard compares against the retain metric measured at that step. Groups pruned earlier
stay pruned (masks are extended, then baked into the weights and enforced).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from torch import nn
from transformers import TrainerCallback

from obliviate.pipelines.prune_structured import CONFIG_KEYS, LossFn, bake_masks, mean_loss
from obliviate.pruning.groups import GroupMasks, discover_groups
from obliviate.pruning.unlearning import UnlearningPruneConfig, dual_sensitivity, unlearning_prune

log = logging.getLogger(__name__)


def _has_lora(model: nn.Module) -> bool:
    return any("lora_" in n for n, _ in model.named_parameters())


class InterleavedPruneCallback(TrainerCallback):
    """Prune every ``interleave_every`` optimizer steps during unlearning.

    Args:
        model: The model being trained (plain or PEFT-wrapped).
        forget_batches: Forget micro-batches of the sensitivity passes.
        retain_batches: Retain micro-batches.
        loss_fn: ``loss_fn(model, batch) -> scalar``.
        opts: The ``pruning`` config (``interleave_every``, ``interleave_ratio_step``,
            ``interleave_max_ratio`` and the ``UnlearningPruneConfig`` fields).
        record: The initial pruning record (its ``pruned_groups`` seed the masks); each step is
            appended to ``record["interleaved"]``.
        retain_eval: Retain metric of the safeguard.
        higher_is_better: Direction of ``retain_eval``.
    """

    def __init__(self, model: nn.Module, forget_batches: Sequence[Any], retain_batches: Sequence[Any], loss_fn: LossFn,
                 opts: dict[str, Any], record: dict[str, Any], retain_eval: Callable[[nn.Module], float] | None,
                 higher_is_better: bool = True) -> None:
        self.model, self.fb, self.rb, self.loss_fn = model, list(forget_batches), list(retain_batches), loss_fn
        self.every = int(opts["interleave_every"])
        self.step_ratio = float(opts.get("interleave_ratio_step") or opts.get("ratio", 0.1))
        self.max_ratio = float(opts.get("interleave_max_ratio") or 0.5)
        self.retain_eval, self.higher_is_better = retain_eval, higher_is_better
        metric = str(opts.get("prune_metric", "lora"))
        if metric == "lora" and not _has_lora(model):
            metric = "grad"  # no adapters on the trained model: use the full-weight gradients
        base = {k: opts[k] for k in CONFIG_KEYS if opts.get(k) is not None}
        self.cfg = UnlearningPruneConfig(**{**base, "prune_metric": metric}, higher_is_better=higher_is_better)
        self.ratio = float(self.cfg.ratio)
        self.record = record
        self.record.setdefault("interleaved", [])
        groups = discover_groups(model)
        keep = {}
        for g in groups:  # the initial prune ran on the unwrapped model: match its keys by suffix
            match = [k for k in record.get("pruned_groups", {}) if k == g.key or g.key.endswith("." + k)]
            mask = GroupMasks([g]).keep[g.key]
            for k in match[:1]:
                mask[record["pruned_groups"][k]] = False
            keep[g.key] = mask
        self.masks = GroupMasks(groups, keep).attach(model)

    def prune_now(self, step: int) -> dict[str, Any]:
        """One interleaved prune step; returns (and records) its summary."""
        self.ratio = min(self.ratio + self.step_ratio, self.max_ratio)
        cfg = UnlearningPruneConfig(**{**{k: getattr(self.cfg, k) for k in CONFIG_KEYS}, "ratio": self.ratio},
                                    higher_is_better=self.higher_is_better)
        was = self.model.training
        before = {"forget": mean_loss(self.model, self.fb, self.loss_fn), "retain": mean_loss(self.model, self.rb, self.loss_fn)}
        n_before = sum(int((~v).sum()) for v in self.masks.keep.values())
        _, _, dual = dual_sensitivity(self.model, self.fb, self.rb, self.loss_fn, cfg, list(self.masks.groups.values()))
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "pruned no group" is a normal outcome mid-training
            res = unlearning_prune(self.model, dual, cfg.ratio, cfg.unlearning_threshold, retain_eval=self.retain_eval,
                                   min_retain_performance=cfg.min_retain_performance, step_size=cfg.step_size,
                                   higher_is_better=self.higher_is_better, masks=self.masks)
        bake_masks(self.model, self.masks)
        after = {"forget": mean_loss(self.model, self.fb, self.loss_fn), "retain": mean_loss(self.model, self.rb, self.loss_fn)}
        self.model.train(was)
        entry = {"step": step, "ratio": self.ratio, "new_pruned": sum(int((~v).sum()) for v in self.masks.keep.values()) - n_before,
                 "pruned_groups": res.pruned, "undone_steps": len(res.undone), "loss": {"before": before, "after": after}}
        self.record["interleaved"].append(entry)
        log.info("interleaved prune at step %d (ratio %.2f): %d new groups", step, self.ratio, entry["new_pruned"])
        return entry

    def on_step_end(self, args, state, control, **kwargs):
        step = int(state.global_step)
        if step > 0 and step % self.every == 0 and step < int(state.max_steps or step + 1):
            self.prune_now(step)


__all__ = ["InterleavedPruneCallback"]
