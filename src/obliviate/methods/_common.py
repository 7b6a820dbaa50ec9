"""Plumbing shared by the LLM methods: the retain term, argument checks, batch helpers.

Nothing here is registered; modules whose name starts with ``_`` are not auto-imported as
methods.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from obliviate.errors import ConfigError, DataError

RETAIN_LOSS_TYPES = ("NLL", "KL")
# How NLL terms are averaged (every method with an NLL term has a ``reduction`` argument):
# "token" = over all answer tokens of the batch, as HF's ``outputs.loss`` and the reference
# framework; the KL retain term is then KL(p_ref || p_θ) over every non-padding position, as
# its ``compute_kl_divergence``. "sequence" = obliviate's earlier variant: per-sequence means,
# then the batch mean (every sequence weighs the same), and KL(p_θ || p_ref) per sequence over
# answer tokens only.
REDUCTIONS = ("token", "sequence")
IDK_KEY = "idk"
LM_KEYS = ("input_ids", "attention_mask", "labels")
_PAD_VALUES = {"input_ids": 0, "attention_mask": 0, "labels": -100}


# ----------------------------------------------------------------------------- argument checks
def check_positive(method: str, name: str, value: float, *, allow_zero: bool = False) -> None:
    """Raise :class:`ConfigError` unless ``value`` > 0 (or >= 0 with ``allow_zero``)."""
    ok = value >= 0 if allow_zero else value > 0
    if not ok:
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"{method} {name} must be {bound}, got {value}")


def check_choice(method: str, name: str, value: Any, choices: Sequence[Any]) -> None:
    """Raise :class:`ConfigError` unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ConfigError(f"{method} {name} must be one of {', '.join(map(repr, choices))}, got {value!r}")


def check_reduction(method: str, value: str) -> None:
    """Raise :class:`ConfigError` unless ``value`` is one of :data:`REDUCTIONS`."""
    check_choice(method, "reduction", value, REDUCTIONS)


# ----------------------------------------------------------------------------- loss pieces
def nll_term(model: nn.Module, sub: dict[str, Any], ctx: Any, reduction: str = "token") -> torch.Tensor:
    """Mean answer NLL of the sub-batch ``sub``: over all its answer tokens (``"token"``, HF's
    ``outputs.loss``) or per sequence, then over the batch (``"sequence"``)."""
    if reduction == "token":
        return ctx.adapter.mean_nll(model, sub)
    return ctx.adapter.per_sample_nll(model, sub)[0].mean()


def retain_loss(model: nn.Module, batch: dict[str, Any], ctx: Any, kind: str, reduction: str = "token") -> torch.Tensor:
    """The retain term on ``batch["retain"]``.

    ``kind="NLL"``: :func:`nll_term`. ``kind="KL"`` (needs ``ctx.ref_model``): with
    ``reduction="token"`` KL(p_ref || p_θ) averaged over every non-padding position (the
    reference framework's ``compute_kl_divergence``, without its padding positions); with
    ``"sequence"`` KL(p_θ || p_ref) averaged over each sequence's answer tokens, then the batch.
    """
    sub = batch["retain"]
    if kind == "KL":
        if reduction == "token":
            return ctx.adapter.reference_kl(model, ctx.ref_model, sub)
        return ctx.adapter.per_sample_kl(model, ctx.ref_model, sub).mean()
    return nll_term(model, sub, ctx, reduction)


def idk_batch(batch: dict[str, Any], method: str) -> dict[str, Any]:
    """``batch["forget"]["idk"]``: the forget questions with an "I don't know" answer.

    Raises:
        DataError: The forget batch carries no IDK sub-batch (see :mod:`obliviate.methods.idk`
            for the contract the data side must meet).
    """
    forget = batch["forget"]
    if IDK_KEY not in forget:
        raise DataError(
            f"{method} needs IDK answers: each forget batch must carry batch['forget']['{IDK_KEY}'] = "
            "{input_ids, attention_mask, labels} with the same questions and a refusal answer "
            "(use an IDK-augmented forget dataset; see obliviate.methods.idk)"
        )
    sub = forget[IDK_KEY]
    if sub["input_ids"].shape[0] != forget["input_ids"].shape[0]:
        raise DataError(f"{method}: the IDK sub-batch has {sub['input_ids'].shape[0]} rows, the forget batch {forget['input_ids'].shape[0]}")
    return sub


# ----------------------------------------------------------------------------- batch helpers
def to_device(obj: Any, device: torch.device | str) -> Any:
    """Move every tensor of a (nested) dict/list to ``device``."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_device(v, device) for v in obj)
    return obj


def select_rows(batch: dict[str, Any], rows: torch.Tensor | Sequence[int]) -> dict[str, Any]:
    """The sub-batch of ``rows`` (every tensor's first axis; nested dicts too)."""
    out: dict[str, Any] = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor) and value.dim() > 0:
            idx = torch.as_tensor(rows, dtype=torch.long, device=value.device)
            out[key] = value.index_select(0, idx)
        elif isinstance(value, dict):
            out[key] = select_rows(value, rows)
        elif isinstance(value, list):
            out[key] = [value[int(i)] for i in rows]
        else:
            out[key] = value
    return out


def model_device(model: nn.Module) -> torch.device:
    """Device of the first parameter (CPU for parameter-less modules)."""
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def pad_collate(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Collate LM items of different lengths (right padding), recursing into nested dicts.

    ``input_ids`` are padded with 0, ``attention_mask`` with 0 and ``labels`` with ``-100``:
    the pad id never matters because padded positions are masked out of attention and of
    every loss. Other tensors are stacked; numbers become a tensor; anything else a list.
    """
    out: dict[str, Any] = {}
    for key in items[0]:
        values = [it[key] for it in items]
        first = values[0]
        if isinstance(first, dict):
            out[key] = pad_collate(values)
        elif key in _PAD_VALUES and (isinstance(first, list) or (isinstance(first, torch.Tensor) and first.dim() == 1)):
            seqs = [torch.as_tensor(v, dtype=torch.long) for v in values]
            width = max(int(s.shape[-1]) for s in seqs)
            padded = torch.full((len(seqs), width), _PAD_VALUES[key], dtype=torch.long)
            for i, s in enumerate(seqs):
                padded[i, : s.shape[-1]] = s
            out[key] = padded
        elif isinstance(first, torch.Tensor):
            out[key] = torch.stack(values)
        elif isinstance(first, (bool, int, float)):
            out[key] = torch.tensor(values)
        else:
            out[key] = values
    return out
