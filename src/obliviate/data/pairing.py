"""The forget/retain pairing dataset every unlearning method trains on.

Two ways to walk the data:

- **pairs** (``anchor="forget"`` or ``"retain"``): one item is ``{"forget": f_item,
  "retain": r_item}``. The dataset is *anchored* on one side (an epoch visits every anchor
  sample once) and the other side is sampled. The sampled index is a pure function of
  ``(seed, epoch, i)``, so a resumed run sees the same pairs (``set_epoch`` is called by the
  Trainer's data loader every epoch).
- **mixed** (``anchor="mixed"``): an epoch is one shuffled pass over the forget set together
  with a seeded random ``retain_fraction`` of the retain set (drawn once), each item
  ``{"forget": ...}`` or ``{"retain": ...}``, so a batch holds both sides in varying
  numbers (:class:`PairCollator` groups them), as Bad Teacher's reference trains on
  forget ∪ 30% of retain.
- **passes** (``anchor="passes"``): an epoch is one full pass over the forget set followed by
  one full pass over the retain set, each in its own seeded order, and every batch holds one
  side only (``{"forget": ...}`` or ``{"retain": ...}``), as the random-labelling reference
  code trains (a forget loader loop, then a retain loader loop). The batches come from
  :meth:`ForgetRetainDataset.batch_sampler`, which ``UnlearningTrainer`` uses when the
  dataset has one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import math

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from obliviate.errors import DataError


class ForgetRetainDataset(Dataset):
    """Pairs each anchor sample with a sampled partner from the other set.

    Args:
        forget: Forget-set dataset (map-style).
        retain: Retain-set dataset (map-style); may be ``None`` for forget-only methods.
        anchor: "forget" (epoch = one pass over forget, retain partners sampled), "retain"
            (the other way round), "passes" (a forget pass, then a retain pass; one side per
            batch) or "mixed" (forget ∪ a ``retain_fraction`` of retain, shuffled together).
        seed: Seed of the partner sampling (and of the pass orders, and of the mixed subset).
        retain_fraction: Share of the retain set in a "mixed" epoch (ignored otherwise).
    """

    ANCHORS = ("forget", "retain", "passes", "mixed")

    def __init__(self, forget: Dataset, retain: Dataset | None, *, anchor: str = "forget", seed: int = 0,
                 retain_fraction: float = 1.0) -> None:
        if anchor not in self.ANCHORS:
            raise DataError(f"anchor must be one of {', '.join(map(repr, self.ANCHORS))}, got '{anchor}'")
        if len(forget) == 0:  # type: ignore[arg-type]
            raise DataError("the forget set is empty; check the forget selection")
        if anchor in ("retain", "passes", "mixed") and (retain is None or len(retain) == 0):  # type: ignore[arg-type]
            raise DataError(f"anchor='{anchor}' needs a non-empty retain set")
        if not 0 < retain_fraction <= 1:
            raise DataError(f"retain_fraction must be in (0, 1], got {retain_fraction}")
        self.forget, self.retain, self.anchor, self.seed = forget, retain, anchor, int(seed)
        self.epoch = 0
        self.mixed_retain = np.zeros(0, dtype=np.int64)
        if anchor == "mixed":  # the retain rows of every epoch, drawn once (the reference's random.sample)
            n_r = len(retain)  # type: ignore[arg-type]
            k = max(1, int(round(retain_fraction * n_r)))
            self.mixed_retain = np.sort(np.random.default_rng([self.seed, 7]).permutation(n_r)[:k])

    def set_epoch(self, epoch: int) -> None:
        """Called by the data loader each epoch; changes the sampled partners."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        if self.anchor == "passes":
            return len(self.forget) + len(self.retain)  # type: ignore[arg-type]
        if self.anchor == "mixed":
            return len(self.forget) + len(self.mixed_retain)  # type: ignore[arg-type]
        return len(self.forget if self.anchor == "forget" else self.retain)  # type: ignore[arg-type]

    def batch_sampler(self, batch_size: int, num_replicas: int = 1) -> "PassesBatchSampler":
        """The batches of one epoch under ``anchor="passes"`` (see :class:`PassesBatchSampler`).

        Raises:
            DataError: The dataset walks pairs, not passes.
        """
        if self.anchor != "passes":
            raise DataError("batch_sampler() is for anchor='passes'; pairs use any sampler")
        return PassesBatchSampler(len(self.forget), len(self.retain), batch_size, self.seed, num_replicas)  # type: ignore[arg-type]

    def _partner(self, i: int, n: int) -> int:
        # A deterministic draw from (seed, epoch, i): reproducible and resume-safe.
        rng = np.random.default_rng([self.seed, self.epoch, i])
        return int(rng.integers(n))

    def __getitem__(self, i: int) -> dict[str, Any]:
        if self.anchor in ("passes", "mixed"):  # rows [0, n_f) are the forget set, the rest the retain set
            n_f = len(self.forget)  # type: ignore[arg-type]
            if i < n_f:
                return {"forget": self.forget[i]}
            j = i - n_f if self.anchor == "passes" else int(self.mixed_retain[i - n_f])
            return {"retain": self.retain[j]}  # type: ignore[index]
        if self.anchor == "forget":
            item = {"forget": self.forget[i]}
            if self.retain is not None and len(self.retain) > 0:  # type: ignore[arg-type]
                item["retain"] = self.retain[self._partner(i, len(self.retain))]  # type: ignore[arg-type]
            return item
        return {
            "retain": self.retain[i],  # type: ignore[index]
            "forget": self.forget[self._partner(i, len(self.forget))],  # type: ignore[arg-type]
        }


class PassesBatchSampler(Sampler[list[int]]):
    """One epoch = the forget rows in batches, then the retain rows in batches.

    Rows index a :class:`ForgetRetainDataset` with ``anchor="passes"`` (``[0, n_f)`` forget,
    ``[n_f, n_f + n_r)`` retain). Each side is shuffled by ``(seed, epoch, side)`` and split
    into batches of ``batch_size`` (the last batch of a side may be smaller, as a
    ``DataLoader`` with ``drop_last=False`` gives), so no batch mixes the two sides.
    ``set_epoch`` (called by the Trainer every epoch) changes the orders; the same epoch
    always gives the same batches (resume-safe).

    With ``num_replicas`` processes (DDP), each optimizer step takes one batch per process
    (accelerate deals the batches round-robin), so the sampler cuts each side into global
    batches of ``batch_size × num_replicas`` rows and splits each of them into
    ``num_replicas`` near-equal per-process batches: a step never mixes the two sides. A
    side's last global batch with fewer rows than processes repeats rows to give every
    process one. The per-process size is ``rows_per_batch``, deliberately not ``batch_size``:
    accelerate's ``BatchSamplerShard`` drops or pads batches shorter than a sampler's
    ``batch_size``, which differs per process at a side's end and deadlocked DDP; without it
    every batch is dealt as it is (all processes take the same number of steps).
    """

    def __init__(self, n_forget: int, n_retain: int, batch_size: int, seed: int = 0, num_replicas: int = 1) -> None:
        if batch_size < 1 or num_replicas < 1:
            raise DataError(f"batch_size and num_replicas must be >= 1, got {batch_size}, {num_replicas}")
        self.n_forget, self.n_retain, self.rows_per_batch, self.seed = int(n_forget), int(n_retain), int(batch_size), int(seed)
        self.num_replicas = int(num_replicas)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        step = self.rows_per_batch * self.num_replicas
        return (math.ceil(self.n_forget / step) + math.ceil(self.n_retain / step)) * self.num_replicas

    def __iter__(self):
        step = self.rows_per_batch * self.num_replicas
        for side, (offset, n) in enumerate(((0, self.n_forget), (self.n_forget, self.n_retain))):
            order = np.random.default_rng([self.seed, self.epoch, side]).permutation(n) + offset
            for start in range(0, n, step):
                rows = order[start : start + step]
                if len(rows) < self.num_replicas:
                    rows = np.resize(rows, self.num_replicas)
                for part in np.array_split(rows, self.num_replicas):
                    yield part.tolist()


def stack_collate(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Collate a list of flat dicts of tensors/numbers into a dict of stacked tensors."""
    out: dict[str, Any] = {}
    for key in items[0]:
        values = [it[key] for it in items]
        if isinstance(values[0], torch.Tensor):
            out[key] = torch.stack(values)
        elif isinstance(values[0], (int, float, bool, np.integer, np.floating)):
            out[key] = torch.tensor(values)
        else:
            out[key] = values
    return out


class PairCollator:
    """Collates pair items side by side with ``inner`` (default: :func:`stack_collate`).

    Items of a "mixed" epoch carry one side each: every side present in the batch is
    collated from the items that have it (a side absent from the whole batch is left out).
    """

    def __init__(self, inner: Callable[[Sequence[dict]], dict] | None = None) -> None:
        self.inner = inner or stack_collate

    def __call__(self, items: Sequence[dict[str, Any]]) -> dict[str, Any]:
        sides = list(dict.fromkeys(side for it in items for side in it))
        return {side: self.inner([it[side] for it in items if side in it]) for side in sides}
