"""The forget/retain pairing dataset every unlearning method trains on.

One item is ``{"forget": f_item, "retain": r_item}``. The dataset is *anchored* on one side
(by default the forget set: an epoch visits every forget sample once) and the other side is
sampled. The sampled index is a pure function of ``(seed, epoch, i)``, so a resumed run sees
the same pairs (``set_epoch`` is called by the Trainer's data loader every epoch).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from obliviate.errors import DataError


class ForgetRetainDataset(Dataset):
    """Pairs each anchor sample with a sampled partner from the other set.

    Args:
        forget: Forget-set dataset (map-style).
        retain: Retain-set dataset (map-style); may be ``None`` for forget-only methods.
        anchor: "forget" (epoch = one pass over forget) or "retain".
        seed: Seed of the partner sampling.
    """

    def __init__(self, forget: Dataset, retain: Dataset | None, *, anchor: str = "forget", seed: int = 0) -> None:
        if anchor not in ("forget", "retain"):
            raise DataError(f"anchor must be 'forget' or 'retain', got '{anchor}'")
        if len(forget) == 0:  # type: ignore[arg-type]
            raise DataError("the forget set is empty; check the forget selection")
        if anchor == "retain" and (retain is None or len(retain) == 0):  # type: ignore[arg-type]
            raise DataError("anchor='retain' needs a non-empty retain set")
        self.forget, self.retain, self.anchor, self.seed = forget, retain, anchor, int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Called by the data loader each epoch; changes the sampled partners."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.forget if self.anchor == "forget" else self.retain)  # type: ignore[arg-type]

    def _partner(self, i: int, n: int) -> int:
        # A deterministic draw from (seed, epoch, i): reproducible and resume-safe.
        rng = np.random.default_rng([self.seed, self.epoch, i])
        return int(rng.integers(n))

    def __getitem__(self, i: int) -> dict[str, Any]:
        if self.anchor == "forget":
            item = {"forget": self.forget[i]}
            if self.retain is not None and len(self.retain) > 0:  # type: ignore[arg-type]
                item["retain"] = self.retain[self._partner(i, len(self.retain))]  # type: ignore[arg-type]
            return item
        return {
            "retain": self.retain[i],  # type: ignore[index]
            "forget": self.forget[self._partner(i, len(self.forget))],  # type: ignore[arg-type]
        }


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
    """Collates pair items side by side with ``inner`` (default: :func:`stack_collate`)."""

    def __init__(self, inner: Callable[[Sequence[dict]], dict] | None = None) -> None:
        self.inner = inner or stack_collate

    def __call__(self, items: Sequence[dict[str, Any]]) -> dict[str, Any]:
        return {side: self.inner([it[side] for it in items]) for side in items[0]}
