"""The one training engine: ``UnlearningTrainer``, a ``transformers.Trainer`` subclass.

``trainer.args`` are plain :class:`transformers.TrainingArguments`, so everything the HF
Trainer offers (schedulers, gradient accumulation, checkpointing, accelerate DDP/FSDP/
DeepSpeed, ``report_to`` logging) applies to every method. The loss is delegated to the
registered method; a frozen reference model is built only when the method declares it.

Two ways to add a method (see ``docs/adding_a_method.md``): a loss object registered in
:data:`obliviate.methods.METHODS`, or (the seed-001 route) a subclass of
:class:`UnlearningTrainer` overriding :meth:`~UnlearningTrainer.compute_loss`, registered in
the same registry. :func:`build_trainer` resolves a handler name to either.
"""

from __future__ import annotations

import copy
from collections import defaultdict
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn
from transformers import Trainer, TrainerCallback, TrainingArguments

from obliviate.engine.progress import tidy_progress
from obliviate.errors import ConfigError
from obliviate.io import atomic_write_json, read_json
from obliviate.methods.base import MethodContext, NoArgs, UnlearningMethod, make_config

#: The divergence guard's state, saved in each mid-training checkpoint folder (resume).
GUARD_STATE_FILE = "obliviate_guard.json"


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

    Subclasses that override :meth:`compute_loss` (the seed-001 route) declare their needs
    with the same class attributes as a method (``needs_reference``, ``needs_retain``,
    ``anchor``) and their hyper-parameters as a ``Config`` dataclass; ``method_args`` are
    parsed into ``self.cfg``.

    Args:
        model: The model to unlearn (modified in place).
        args: ``TrainingArguments``.
        method: The method object; ``None`` for subclasses that override :meth:`compute_loss`.
        adapter: The model adapter (how a batch becomes per-sample losses).
        ref_model: An explicit reference model; by default one is built iff the method (or,
            without a method, this trainer class) declares ``needs_reference``.
        method_args: Hyper-parameters of a trainer subclass (``method`` is None), validated
            against its ``Config``. Loss-object methods take theirs in their constructor.
        extras: Added to ``ctx.extras``. By default ``ctx.extras`` holds ``forget_dataset``
            (the pairing dataset's ``forget`` side, if any), ``collate_forget`` (collates a list
            of forget items into a forget batch with ``data_collator``) and ``ref_batch_size``
            (``per_device_eval_batch_size``), so methods can precompute per-sample reference
            outputs in ``setup``.
        **kwargs: Passed to ``transformers.Trainer`` (``train_dataset``, ``data_collator``, ...).
    """

    Config: ClassVar[type] = NoArgs
    needs_reference: ClassVar[bool] = False
    needs_retain: ClassVar[bool] = True
    anchor: ClassVar[str] = "forget"
    # A method's loss is a mean over its micro-batch: the Trainer divides it by the
    # gradient-accumulation steps (as transformers 4.45, the reference framework's version).
    # transformers >= 5.2x reads this flag; earlier 5.x releases (5.17 on the GPU image) skip
    # the division when the model's forward takes **kwargs unless model_accepts_loss_kwargs
    # is False, which __init__ sets too (tests/unit/llm/test_reference_training_defaults.py).
    loss_is_scaled_for_ga = False

    def __init__(
        self,
        model: nn.Module,
        args: TrainingArguments,
        method: UnlearningMethod | None = None,
        adapter: Any = None,
        ref_model: nn.Module | None = None,
        method_args: dict[str, Any] | None = None,
        extras: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        args.remove_unused_columns = False  # batches are {"forget": ..., "retain": ...}
        self.guard = kwargs.pop("guard", None)  # obliviate.engine.guard.DivergenceGuard
        self._micro = (-1, 0)  # (global step, micro-batch index) for per-step seeding
        super().__init__(model=model, args=args, **kwargs)
        self.model_accepts_loss_kwargs = False  # see loss_is_scaled_for_ga
        tidy_progress(self, "unlearn")  # labelled bar with the logs as postfix, not printed dicts
        self.method = method
        if method is not None and method_args:
            raise ConfigError("method_args are for UnlearningTrainer subclasses; a method object takes them in its constructor")
        self.cfg = make_config(type(self).Config, method_args, type(self).__name__) if method is None else method.cfg
        owner = method if method is not None else self
        needs_ref = bool(getattr(owner, "needs_reference", False))
        if ref_model is None and needs_ref:
            ref_model = frozen_copy(model)
        self.ctx = MethodContext(
            adapter=adapter, ref_model=ref_model if (needs_ref or ref_model is not None) else None,
            generator=torch.Generator().manual_seed(int(args.seed)),
            extras={**self._default_extras(), **(extras or {})},
        )
        self._method_logs: dict[str, list[float]] = defaultdict(list)
        if method is not None:
            method.setup(self.model, self.ctx)
            self.add_callback(_MethodHooks(method, self.ctx))
            # Optional: a method may contribute TrainerCallbacks (schedules, early stopping, clean-up).
            for callback in getattr(method, "callbacks", lambda _ctx: [])(self.ctx):
                self.add_callback(callback)
        if hasattr(self.train_dataset, "set_epoch"):
            self.add_callback(_EpochToDataset(self.train_dataset))

    def get_train_dataloader(self):
        """The pairs go through HF's sampler; a dataset that walks *passes* (a
        ``batch_sampler`` method, see :class:`~obliviate.data.pairing.ForgetRetainDataset`)
        supplies its own batches (one side per batch), prepared by accelerate as usual."""
        make = getattr(self.train_dataset, "batch_sampler", None)
        if make is None or getattr(self.train_dataset, "anchor", None) != "passes":
            return super().get_train_dataloader()
        from functools import partial

        from torch.utils.data import DataLoader
        from transformers.trainer_utils import seed_worker

        args = self.args
        loader = DataLoader(self.train_dataset, batch_sampler=make(self._train_batch_size, max(1, int(args.world_size))), collate_fn=self.data_collator,
                            num_workers=args.dataloader_num_workers, pin_memory=args.dataloader_pin_memory,
                            worker_init_fn=partial(seed_worker, num_workers=args.dataloader_num_workers, rank=args.process_index))
        return self.accelerator.prepare(loader)

    @property
    def ref_model(self) -> nn.Module | None:
        """The frozen reference model, read through ``ctx`` (a method may release it)."""
        ctx = self.__dict__.get("ctx")
        return None if ctx is None else ctx.ref_model

    def _default_extras(self) -> dict[str, Any]:
        forget = getattr(self.train_dataset, "forget", None)
        if forget is None:
            return {}
        collator = self.data_collator

        def collate_forget(items: list[Any]) -> Any:
            return collator([{"forget": it} for it in items])["forget"]

        return {"forget_dataset": forget, "collate_forget": collate_forget, "ref_batch_size": int(self.args.per_device_eval_batch_size)}

    def compute_loss(self, model: nn.Module, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None):
        """Delegate to the method's ``loss(model, batch, ctx)``; collect its logs."""
        self.ctx.step = self.state.global_step
        loss, logs = self.method.loss(model, inputs, self.ctx)  # type: ignore[union-attr]
        for key, value in logs.items():
            self._method_logs[key].append(float(value))
        return (loss, None) if return_outputs else loss

    def train(self, resume_from_checkpoint: str | bool | None = None, *args: Any, **kwargs: Any) -> Any:
        """``Trainer.train``; a resumed run also restores the divergence guard's reference retain loss."""
        if isinstance(resume_from_checkpoint, str) and self.guard is not None:
            state = Path(resume_from_checkpoint) / GUARD_STATE_FILE
            if state.is_file():
                self.guard.load_state_dict(read_json(state))
        return super().train(resume_from_checkpoint, *args, **kwargs)

    def _save_checkpoint(self, model: nn.Module, trial: Any) -> None:
        # The guard's state goes into the checkpoint folder before the Trainer's files: the
        # Trainer writes trainer_state.json last, and only folders with it are resumed from.
        if self.guard is not None:
            from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

            folder = Path(self._get_output_dir(trial=trial)) / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
            if self.args.should_save:
                atomic_write_json(folder / GUARD_STATE_FILE, self.guard.state_dict())
        super()._save_checkpoint(model, trial)

    def training_step(self, model: nn.Module, inputs: dict[str, Any], num_items_in_batch: Any = None) -> torch.Tensor:
        """One micro-batch: seeds the method's generator from (seed, step) so a resumed run
        draws the same random numbers, then lets the divergence guard inspect the loss."""
        step = self.state.global_step
        micro = self._micro[1] + 1 if self._micro[0] == step else 0
        self._micro = (step, micro)
        self.ctx.generator.manual_seed(int(self.args.seed) * 1_000_003 + step * 1_009 + micro)
        loss = super().training_step(model, inputs, num_items_in_batch)
        if self.guard is not None:
            latest = {k: v[-1] for k, v in self._method_logs.items() if v}
            if self.guard.check(step, float(loss.detach()), latest):
                model.zero_grad(set_to_none=True)  # the pending optimizer step must not apply NaN gradients
                self.control.should_training_stop = True
            else:
                self.guard.maybe_snapshot(model, step)
        return loss

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        """Add the mean of each method log since the last logging step."""
        for key, values in self._method_logs.items():
            if values:
                logs[key] = sum(values) / len(values)
        self._method_logs.clear()
        super().log(logs, *args, **kwargs)


def build_trainer(handler: str, method_args: dict[str, Any] | None = None) -> tuple[type[UnlearningTrainer], UnlearningMethod | None]:
    """Resolve a ``trainer.handler`` name to ``(trainer class, method object)``.

    Args:
        handler: A name registered in :data:`obliviate.methods.METHODS` (or an alias).
        method_args: ``trainer.method_args``.

    Returns:
        ``(UnlearningTrainer, method)`` for a loss-object method, or ``(subclass, None)`` for a
        registered :class:`UnlearningTrainer` subclass; its ``method_args`` are validated here
        and must be passed again as ``trainer_cls(..., method_args=method_args)``. Flags such as
        ``needs_retain``/``anchor`` are read from ``method if method is not None else
        trainer_cls``. One-shot methods (``method.one_shot``) are applied with
        ``method.apply(...)`` instead of being trained.

    Raises:
        UnknownNameError: ``handler`` is not registered ("did you mean" included).
        ConfigError: Unknown or invalid ``method_args``.
    """
    from obliviate.methods import METHODS, build_method  # late: method modules may import this module

    entry = METHODS.get(handler)
    if isinstance(entry, type) and issubclass(entry, UnlearningTrainer):
        make_config(entry.Config, method_args, METHODS.canonical(handler))
        return entry, None
    return UnlearningTrainer, build_method(handler, method_args)


class SupervisedTrainer(Trainer):
    """Plain supervised training through an adapter (trains original and retrained models).

    The loss is the mean NLL over all answer tokens of each micro-batch (HF's
    ``outputs.loss``, the reference framework's fine-tuning loss; for images the mean
    cross-entropy), divided by the gradient-accumulation steps as in transformers 4.45.
    ``reduction="sequence"`` averages per sequence first.
    """

    loss_is_scaled_for_ga = False

    def __init__(self, model: nn.Module, args: TrainingArguments, adapter: Any, reduction: str = "token", **kwargs: Any) -> None:
        if reduction not in ("token", "sequence"):
            raise ConfigError(f"reduction must be 'token' or 'sequence', got {reduction!r}")
        args.remove_unused_columns = False
        super().__init__(model=model, args=args, **kwargs)
        self.model_accepts_loss_kwargs = False  # see UnlearningTrainer.loss_is_scaled_for_ga
        tidy_progress(self, "train")
        self.adapter, self.reduction = adapter, reduction

    def compute_loss(self, model: nn.Module, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None):
        if self.reduction == "token":
            loss = self.adapter.mean_nll(model, inputs)
        else:
            loss = self.adapter.per_sample_nll(model, inputs)[0].mean()
        return (loss, None) if return_outputs else loss
