"""Magnitude pruning (seed 002): OMP (one-shot) and IMP (iterative, with weight rewinding).

Both are *global unstructured L1-magnitude* pruning: all prunable weights (see
:mod:`obliviate.pruning.masks`) are ranked together by ``|w|`` and the smallest
``round(rate * total)`` are set to zero, so layers end with different sparsities. Ties are
broken by position (stable sort), so the pruned count is exact.

- **OMP** prunes the trained model once to ``rate``.
- **IMP** runs ``rounds`` rounds of *prune -> rewind -> retrain*. Round ``i`` raises the
  global sparsity to ``1 - (1 - p)^i`` with ``p = 1 - (1 - rate)^(1/rounds)`` (each round
  prunes ``p`` of the surviving weights), ranking the survivors by their current magnitude;
  then every weight is rewound to its value at epoch ``k`` (``rewind_state``: captured with
  :class:`RewindCapture` during the original training; the initial weights when ``k = 0``),
  the mask is enforced (pruned weights stay 0) and the model is retrained by ``retrain``.

Example:
    >>> from obliviate.pruning import PRUNERS, measure_sparsity
    >>> result = PRUNERS.get("omp")(model, rate=0.9)            # doctest: +SKIP
    >>> measure_sparsity(model).sparsity                       # doctest: +SKIP
    0.9
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from transformers import TrainerCallback

from obliviate.errors import ConfigError
from obliviate.pruning import PRUNERS
from obliviate.pruning.masks import Masks, attach_masks, measure_sparsity, prunable_weights

log = logging.getLogger(__name__)


@dataclass
class PruneResult:
    """What a pruner returns: the masks it enforces on the model and a JSON-able record."""

    masks: Masks
    info: dict[str, Any] = field(default_factory=dict)


def _check_rate(rate: float) -> float:
    rate = float(rate)
    if not 0.0 <= rate < 1.0:
        raise ConfigError(f"pruning rate must be in [0, 1), got {rate}")
    return rate


@torch.no_grad()
def global_magnitude_masks(weights: dict[str, torch.Tensor], rate: float, previous: Masks | None = None) -> Masks:
    """Masks pruning the ``round(rate * total)`` smallest-magnitude entries over all ``weights``.

    Args:
        weights: ``{name: weight}`` ranked together (one global threshold).
        rate: Target fraction of pruned entries in ``[0, 1)``.
        previous: Masks already in force; their pruned entries are pruned first, so the new
            masks only ever remove more (IMP).

    Returns:
        ``{name: bool tensor}`` (``True`` = kept), exactly ``round(rate * total)`` False.
    """
    rate = _check_rate(rate)
    names = list(weights)
    scores = []
    for name in names:
        s = weights[name].detach().abs().float().flatten().cpu()
        if previous is not None and name in previous:
            s = torch.where(previous[name].flatten().cpu(), s, torch.full_like(s, -1.0))
        scores.append(s)
    flat = torch.cat(scores) if scores else torch.zeros(0)
    k = int(round(rate * flat.numel()))
    keep = torch.ones(flat.numel(), dtype=torch.bool)
    if k:
        order = torch.sort(flat, stable=True).indices
        keep[order[:k]] = False
    out, start = {}, 0
    for name in names:
        n = weights[name].numel()
        out[name] = keep[start : start + n].view(weights[name].shape).clone()
        start += n
    return out


@PRUNERS.register("omp", aliases=("OMP",), kind="unstructured")
def omp(model: nn.Module, *, rate: float, include_head: bool = False, head_name: str | None = None, **_: Any) -> PruneResult:
    """One-shot global magnitude pruning of ``model`` (in place) to ``rate``; masks enforced.

    Args:
        model: The trained model.
        rate: Fraction of prunable weights to zero.
        include_head: Also prune the classifier head (default: no, as in the sparsity
            unlearning papers).
        head_name: Module name of the head if the heuristics would miss it.
    """
    weights = prunable_weights(model, include_head=include_head, head_name=head_name)
    if not weights:
        raise ConfigError("the model has no nn.Linear/nn.Conv weights to prune")
    masks = global_magnitude_masks(weights, rate)
    attach_masks(model, masks)
    measured = measure_sparsity(model, include_head=include_head, head_name=head_name)
    return PruneResult(masks, {"method": "omp", "rate": float(rate), "include_head": include_head, "sparsity": measured.sparsity})


def imp_round_rates(rate: float, rounds: int) -> list[float]:
    """Cumulative global sparsity after each IMP round (last = ``rate``)."""
    rate = _check_rate(rate)
    if int(rounds) < 1:
        raise ConfigError(f"IMP needs rounds >= 1, got {rounds}")
    per_round = 1.0 - (1.0 - rate) ** (1.0 / int(rounds))
    return [1.0 - (1.0 - per_round) ** i for i in range(1, int(rounds) + 1)][:-1] + [rate]


@torch.no_grad()
def rewind(model: nn.Module, rewind_state: dict[str, torch.Tensor]) -> None:
    """Load ``rewind_state`` (weights at epoch ``k``) into ``model``; attached masks re-zero pruned entries."""
    from obliviate.pruning.masks import enforce_masks

    missing, unexpected = model.load_state_dict(rewind_state, strict=False)
    if missing or unexpected:
        raise ConfigError(f"the rewind checkpoint does not fit the model: missing {list(missing)[:3]}, unexpected {list(unexpected)[:3]}")
    enforce_masks(model)


@PRUNERS.register("imp", aliases=("IMP",), kind="unstructured")
def imp(
    model: nn.Module,
    *,
    rate: float,
    rounds: int = 3,
    rewind_state: dict[str, torch.Tensor] | None = None,
    retrain: Callable[[nn.Module, int], Any] | None = None,
    include_head: bool = False,
    head_name: str | None = None,
    **_: Any,
) -> PruneResult:
    """Iterative magnitude pruning with rewinding (lottery-ticket style), in place.

    Args:
        model: The trained (dense) model.
        rate: Target global sparsity after the last round.
        rounds: Number of prune -> rewind -> retrain rounds.
        rewind_state: State dict to rewind to (epoch ``k`` of the original training, or the
            initial weights). ``None`` skips rewinding (fine-tuning IMP).
        retrain: ``retrain(model, round_index)`` trains the masked model (masks are attached
            and stay enforced); ``None`` skips retraining.
        include_head, head_name: As in :func:`omp`.
    """
    masks: Masks | None = None
    history = []
    for i, target in enumerate(imp_round_rates(rate, rounds), start=1):
        weights = prunable_weights(model, include_head=include_head, head_name=head_name)
        if not weights:
            raise ConfigError("the model has no nn.Linear/nn.Conv weights to prune")
        masks = global_magnitude_masks(weights, target, previous=masks)
        attach_masks(model, masks)
        if rewind_state is not None:
            rewind(model, rewind_state)
        pruned = measure_sparsity(model, include_head=include_head, head_name=head_name).sparsity
        log.info("IMP round %d/%d: pruned to %.1f%% sparsity%s%s", i, int(rounds), 100 * pruned,
                 ", rewound" if rewind_state is not None else "", ", retraining" if retrain is not None else "")
        if retrain is not None:
            retrain(model, i)
        history.append({"round": i, "target": target, "sparsity_after_prune": pruned,
                        "sparsity_after_retrain": measure_sparsity(model, include_head=include_head, head_name=head_name).sparsity})
    assert masks is not None  # rounds >= 1 is checked in imp_round_rates
    info = {"method": "imp", "rate": float(rate), "rounds": int(rounds), "include_head": include_head,
            "rewound": rewind_state is not None, "retrained": retrain is not None, "history": history,
            "sparsity": measure_sparsity(model, include_head=include_head, head_name=head_name).sparsity}
    return PruneResult(masks, info)


class RewindCapture(TrainerCallback):
    """Captures the weights at the end of epoch ``epoch`` (``0`` = before training) for IMP rewinding.

    Args:
        epoch: The rewind epoch ``k``.

    Attributes:
        state: The captured CPU state dict (``None`` until the epoch is reached).
    """

    def __init__(self, epoch: int = 0) -> None:
        if int(epoch) < 0:
            raise ConfigError(f"rewind_epoch must be >= 0, got {epoch}")
        self.epoch = int(epoch)
        self.state: dict[str, torch.Tensor] | None = None

    def _take(self, model: nn.Module | None) -> None:
        if model is not None and self.state is None:
            self.state = {k: v.detach().clone().cpu() for k, v in model.state_dict().items()}

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if self.epoch == 0:
            self._take(model)

    def on_epoch_end(self, args, state, control, model=None, **kwargs):
        if self.epoch > 0 and math.isclose(float(state.epoch or 0), self.epoch, abs_tol=1e-6):
            self._take(model)
