"""The LoRAPrune fine-tuning loop shared by both tracks of ``obliviate prune pruning=loraprune``.

Defaults follow LoRAPrune's ``prune.py`` / ``script/prune.sh`` and its ``LoRAPruneTrainer``
(an HF Trainer with ``TrainingArguments(warmup_steps=0, optim="adamw_torch")``): AdamW (no
weight decay), learning rate 1e-4 decayed linearly to 0 over the run, gradient clipping at
norm 1.0, LoRA r 8 / alpha 16 / dropout 0.05 on every linear layer of the blocks, importance
EMA updated once per optimizer step after clipping, pruning every ``prune_freq`` (10) steps
on the cubic schedule between ``warmup_steps`` and ``cooldown_steps`` (default 10% of the
steps each, LoRAPrune's ``warmup_iters`` / ``cooldown_iters``). The reference's effective
batch (128 = 2 x 64 accumulation) is ``pruning.batch_size x pruning.grad_accum`` here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from obliviate.errors import ConfigError
from obliviate.pipelines.common import timer

log = logging.getLogger(__name__)

CONFIG_KEYS = ("init_ratio", "target_ratio", "prune_freq", "prune_metric", "mode", "beta", "norm", "protect_layers", "prune_kinds")


def loraprune_config(opts: dict[str, Any], steps: int) -> Any:
    """:class:`~obliviate.pruning.loraprune.LoRAPruneConfig` from ``pruning.*`` options.

    ``warmup_steps`` / ``cooldown_steps`` left null become ``int(0.1 * steps)`` (LoRAPrune's
    ``warmup_iters = cooldown_iters = 0.1``); the LoRA metric needs at least one warm-up step.
    """
    from obliviate.pruning.loraprune import LoRAPruneConfig

    kw = {k: opts[k] for k in CONFIG_KEYS if opts.get(k) is not None}
    for key in ("warmup_steps", "cooldown_steps"):
        value = opts.get(key)
        kw[key] = int(0.1 * steps) if value is None else int(value)
    if kw.get("prune_metric", "lora") == "lora" and kw["warmup_steps"] < 1:
        kw["warmup_steps"] = 1  # B = 0 before the first update: the LoRA estimate needs one step
    return LoRAPruneConfig(**kw)


def train_loraprune(peft: nn.Module, batches: Iterator[Any], loss_fn: Callable[[nn.Module, Any], torch.Tensor], steps: int,
                    opts: dict[str, Any], pcfg: Any, desc: str = "loraprune") -> tuple[Any, list[dict[str, float]], float]:
    """Fine-tune the LoRA adapters of ``peft`` for ``steps`` optimizer steps while pruning.

    Args:
        peft: The PEFT-wrapped model (trainable adapters; all weights with ``prune_metric=grad``).
        batches: An endless iterator of micro-batches.
        loss_fn: ``loss_fn(model, batch) -> scalar``.
        steps: Optimizer steps.
        opts: ``pruning.*`` (``lr``, ``lr_scheduler``, ``max_grad_norm``, ``grad_accum``,
            ``weight_decay``, ``disable_tqdm``).
        pcfg: The pruning config (:func:`loraprune_config`).
        desc: Progress-bar label.

    Returns:
        ``(pruner, history, seconds)``: history has the loss, learning rate and sparsity at
        every prune step and at the last step.
    """
    from tqdm.auto import tqdm
    from transformers import get_scheduler

    from obliviate.pruning.loraprune import LoRAPruner

    accum = int(opts.get("grad_accum", 1) or 1)
    if accum < 1 or steps < 1:
        raise ConfigError(f"pruning.steps ({steps}) and pruning.grad_accum ({accum}) must be >= 1")
    pruner = LoRAPruner(peft, steps, pcfg)
    params = [p for p in peft.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=float(opts.get("lr", 1e-4)), weight_decay=float(opts.get("weight_decay", 0.0)))
    sched = get_scheduler(str(opts.get("lr_scheduler", "linear")), opt, num_warmup_steps=0, num_training_steps=steps)
    clip = opts.get("max_grad_norm", 1.0)
    history: list[dict[str, float]] = []
    peft.train()
    bar = tqdm(range(steps), desc=desc, unit="step", disable=bool(opts.get("disable_tqdm", False)))
    with timer() as t:
        for step in bar:
            total = 0.0
            for _ in range(accum):
                loss = loss_fn(peft, next(batches)) / accum
                if not torch.isfinite(loss):
                    raise ConfigError(f"non-finite training loss {float(loss)} at LoRAPrune step {step}; lower pruning.lr")
                loss.backward()
                total += float(loss.detach())
            if clip:
                torch.nn.utils.clip_grad_norm_(params, float(clip))
            ratio = pruner.step(step)
            lr = sched.get_last_lr()[0]
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            sparsity = pruner.masks.sparsity()
            bar.set_postfix(loss=f"{total:.3f}", sparsity=f"{sparsity:.2f}", refresh=False)
            if ratio is not None or step == steps - 1:
                history.append({"step": step, "loss": total, "lr": lr, "sparsity": sparsity})
    bar.close()
    return pruner, history, t["s"]


__all__ = ["loraprune_config", "train_loraprune"]
