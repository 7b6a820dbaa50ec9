"""The one training engine: ``UnlearningTrainer``, a ``transformers.Trainer`` subclass.

``trainer.args`` are plain :class:`transformers.TrainingArguments`, so everything the HF
Trainer offers (schedulers, gradient accumulation, checkpointing, accelerate DDP/FSDP/
DeepSpeed, ``report_to`` logging) applies to every method. The loss is delegated to the
registered method; a frozen reference model is built only when the method declares it.
"""

from __future__ import annotations

import copy
from collections import defaultdict
from typing import Any

import torch
from torch import nn
from transformers import Trainer, TrainerCallback, TrainingArguments

from obliviate.methods.base import MethodContext, UnlearningMethod


def frozen_copy(model: nn.Module) -> nn.Module:
    """A deep copy in eval mode with gradients disabled (the reference model)."""
    ref = copy.deepcopy(model)
    ref.eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    return ref


class _MethodHooks(TrainerCallback):
    """Calls the method's hooks around optimizer steps (gradient masks, weight projections)."""

    def __init__(self, method: UnlearningMethod, ctx: MethodContext) -> None:
        self.method, self.ctx = method, ctx

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.method.before_step(model, self.ctx)

    def on_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.method.after_step(model, self.ctx)


class _EpochToDataset(TrainerCallback):
    """Tells the pairing dataset the epoch (also under accelerate's sharded samplers)."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.dataset.set_epoch(int(state.epoch or 0))


class UnlearningTrainer(Trainer):
    """Trainer whose loss is an unlearning method's loss over forget/retain batch pairs.

    Args:
        model: The model to unlearn (modified in place).
        args: ``TrainingArguments``.
        method: The method object; ``None`` for subclasses that override :meth:`compute_loss`.
        adapter: The model adapter (how a batch becomes per-sample losses).
        ref_model: An explicit reference model; by default one is built iff the method
            declares ``needs_reference``.
        **kwargs: Passed to ``transformers.Trainer`` (``train_dataset``, ``data_collator``, ...).
    """

    def __init__(
        self,
        model: nn.Module,
        args: TrainingArguments,
        method: UnlearningMethod | None = None,
        adapter: Any = None,
        ref_model: nn.Module | None = None,
        **kwargs: Any,
    ) -> None:
        args.remove_unused_columns = False  # batches are {"forget": ..., "retain": ...}
        super().__init__(model=model, args=args, **kwargs)
        self.method = method
        needs_ref = bool(method is not None and getattr(method, "needs_reference", False))
        if ref_model is None and needs_ref:
            ref_model = frozen_copy(model)
        self.ref_model = ref_model if (needs_ref or ref_model is not None) else None
        self.ctx = MethodContext(
            adapter=adapter, ref_model=self.ref_model,
            generator=torch.Generator().manual_seed(int(args.seed)),
        )
        self._method_logs: dict[str, list[float]] = defaultdict(list)
        if method is not None:
            method.setup(self.model, self.ctx)
            self.add_callback(_MethodHooks(method, self.ctx))
        if hasattr(self.train_dataset, "set_epoch"):
            self.add_callback(_EpochToDataset(self.train_dataset))

    def compute_loss(self, model: nn.Module, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None):
        """Delegate to the method's ``loss(model, batch, ctx)``; collect its logs."""
        self.ctx.step = self.state.global_step
        loss, logs = self.method.loss(model, inputs, self.ctx)  # type: ignore[union-attr]
        for key, value in logs.items():
            self._method_logs[key].append(float(value))
        return (loss, None) if return_outputs else loss

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        """Add the mean of each method log since the last logging step."""
        for key, values in self._method_logs.items():
            if values:
                logs[key] = sum(values) / len(values)
        self._method_logs.clear()
        super().log(logs, *args, **kwargs)


class SupervisedTrainer(Trainer):
    """Plain supervised training through an adapter (trains original and retrained models)."""

    def __init__(self, model: nn.Module, args: TrainingArguments, adapter: Any, **kwargs: Any) -> None:
        args.remove_unused_columns = False
        super().__init__(model=model, args=args, **kwargs)
        self.adapter = adapter

    def compute_loss(self, model: nn.Module, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None):
        nll, logits = self.adapter.per_sample_nll(model, inputs)
        loss = nll.mean()
        return (loss, logits) if return_outputs else loss
