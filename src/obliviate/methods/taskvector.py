"""Task Vector (one-shot): subtract the forget-set fine-tuning direction.

::

    θ' = θ − α · (θ_ft − θ)

``θ_ft`` = ``θ`` fine-tuned further on the forget set (plain AdamW on the answer NLL, a token
mean over the batch as HF's loss unless ``reduction="sequence"``; ``finetune_*`` arguments). The fine-tuning runs on the model itself after saving ``θ`` (one
extra copy of the trainable parameters, on CPU with ``offload=True``), then every trainable
parameter is set to ``θ − α·(θ_ft − θ)`` in place. Buffers (e.g. BatchNorm statistics) are
restored to their original values. Parameters with ``requires_grad=False`` are not fine-tuned
and so not changed (with a PEFT model only the adapter weights move).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from obliviate.methods import METHODS
from obliviate.methods._common import check_positive, check_reduction, model_device, nll_term, pad_collate, to_device
from obliviate.methods.base import UnlearningMethod

log = logging.getLogger(__name__)


@dataclass
class TaskVectorConfig:
    """Arguments of TaskVector.

    Attributes:
        alpha: Step size α along the negated task vector.
        finetune_epochs: Epochs of fine-tuning on the forget set that produce θ_ft.
        finetune_max_steps: If set, stop fine-tuning after this many optimizer steps.
        finetune_lr: AdamW learning rate of the fine-tuning.
        finetune_batch_size: Batch size of the fine-tuning.
        finetune_weight_decay: AdamW weight decay of the fine-tuning.
        offload: Keep the saved θ on CPU (saves accelerator memory).
        reduction: Of the fine-tuning NLL: "token" (over all answer tokens of the batch, HF's
            loss) or "sequence" (per-sequence means, then the batch mean).
    """

    alpha: float = 1.0
    finetune_epochs: float = 5.0
    finetune_max_steps: int | None = None
    finetune_lr: float = 1e-5
    finetune_batch_size: int = 4
    finetune_weight_decay: float = 0.0
    offload: bool = False
    reduction: str = "token"


class _Ctx:
    """The part of a method context :func:`nll_term` reads (the adapter)."""

    def __init__(self, adapter: Any) -> None:
        self.adapter = adapter


def negate_task_vector(param: torch.Tensor, base: torch.Tensor, alpha: float) -> torch.Tensor:
    """``base − α·(param − base)`` (``param`` = fine-tuned value, ``base`` = original value)."""
    return base - alpha * (param - base)


@METHODS.register("TaskVector", tracks=("llm", "vision"))
class TaskVector(UnlearningMethod):
    """One-shot: fine-tune on forget, then move the other way from the original weights."""

    Config = TaskVectorConfig
    one_shot = True
    needs_retain = False

    def __init__(self, config: TaskVectorConfig | None = None) -> None:
        super().__init__(config)
        check_positive("TaskVector", "alpha", self.cfg.alpha)
        check_positive("TaskVector", "finetune_lr", self.cfg.finetune_lr)
        check_positive("TaskVector", "finetune_epochs", self.cfg.finetune_epochs)
        check_positive("TaskVector", "finetune_batch_size", self.cfg.finetune_batch_size)
        check_reduction("TaskVector", self.cfg.reduction)
        if self.cfg.finetune_max_steps is not None:
            check_positive("TaskVector", "finetune_max_steps", self.cfg.finetune_max_steps)
        self.finetune_steps = 0

    def finetune(self, model: nn.Module, forget_dataset: Dataset, adapter: Any, seed: int,
                 collate_fn: Callable[[list], dict] | None = None) -> None:
        """Fine-tune ``model`` in place on ``forget_dataset`` (mean NLL, AdamW)."""
        cfg = self.cfg
        loader = DataLoader(forget_dataset, batch_size=int(cfg.finetune_batch_size), shuffle=True,
                            generator=torch.Generator().manual_seed(int(seed)), collate_fn=collate_fn or pad_collate)
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=cfg.finetune_lr, weight_decay=cfg.finetune_weight_decay)
        total = math.ceil(cfg.finetune_epochs * len(loader))
        if cfg.finetune_max_steps is not None:
            total = min(total, int(cfg.finetune_max_steps))
        device = model_device(model)
        was_training = model.training
        model.train()
        self.finetune_steps = 0
        while self.finetune_steps < total:
            for batch in loader:
                if self.finetune_steps >= total:
                    break
                loss = nll_term(model, to_device(batch, device), _Ctx(adapter), cfg.reduction)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                self.finetune_steps += 1
        opt.zero_grad(set_to_none=True)
        model.train(was_training)

    def apply(self, model: nn.Module, forget_dataset: Dataset, retain_dataset: Dataset | None, adapter: Any, seed: int,
              collate_fn: Callable[[list], dict] | None = None) -> nn.Module:
        """Return ``model`` with ``θ' = θ − α(θ_ft − θ)`` (modified in place).

        Args:
            model: The model to unlearn.
            forget_dataset: Items collated by ``collate_fn`` into adapter batches.
            retain_dataset: Unused (kept for the one-shot signature).
            adapter: The model adapter (``per_sample_nll``).
            seed: Seed of the fine-tuning data order.
            collate_fn: Collator; default :func:`~obliviate.methods._common.pad_collate`
                (right-pads LM items, stacks image items).
        """
        store = "cpu" if self.cfg.offload else None
        base = {n: p.detach().to(store or p.device, copy=True) for n, p in model.named_parameters() if p.requires_grad}
        buffers = {n: b.detach().clone() for n, b in model.named_buffers()}
        self.finetune(model, forget_dataset, adapter, seed, collate_fn)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name in base:
                    p.copy_(negate_task_vector(p.detach(), base[name].to(p.device), self.cfg.alpha))
            for name, b in model.named_buffers():
                b.copy_(buffers[name])
        log.info("TaskVector: %d fine-tuning steps, alpha=%g, %d tensors updated", self.finetune_steps, self.cfg.alpha, len(base))
        return model
