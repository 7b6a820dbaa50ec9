"""Reference log-probs computed once: the cache behind NPO and IdkDPO.

The reference model is frozen, so ``log π_ref(y|x)`` of a forget sample never changes.
:class:`CachedReference` computes it once per sample and serves it from memory afterwards:

- ``mode="precompute"`` (default): :meth:`CachedReference.setup` runs the reference over the
  whole forget set once, before training, using ``ctx.extras["forget_dataset"]`` and
  ``ctx.extras["collate_forget"]`` (:class:`~obliviate.engine.UnlearningTrainer` fills
  both from its pairing dataset and collator). No reference forward happens during training.
- ``mode="lazy"`` (or when the forget dataset is not available): each step runs the
  reference only on the rows of the batch not yet in the cache.

In both modes, once every forget sample is cached (``len(forget_dataset)`` distinct samples
seen) and nothing else needs the reference (``keep_reference=False``), the method sets
``ctx.ref_model = None``: the trainer reads its reference through the context, so the
frozen copy is released. Keys are content hashes of each sequence's non-padding tokens and
labels, so they are invariant to padding, batch composition and shuffling, and identical
across resumed runs.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from typing import Any

import torch

from obliviate.errors import ConfigError
from obliviate.methods._common import model_device, select_rows, to_device
from obliviate.progress import progress

log = logging.getLogger(__name__)

CACHE_MODES = ("precompute", "lazy")


def sample_keys(batch: dict[str, Any]) -> list[bytes]:
    """One content key per row: a hash of the row's non-padding ``input_ids`` and ``labels``.

    Batches without ``input_ids`` (image classifiers) are keyed by ``index`` if present,
    else by the bytes of every tensor row.
    """
    if "input_ids" in batch:
        ids = batch["input_ids"].detach().to("cpu", torch.long)
        labels = batch["labels"].detach().to("cpu", torch.long)
        keep = batch["attention_mask"].detach().to("cpu").bool() if "attention_mask" in batch else torch.ones_like(ids, dtype=torch.bool)
        keys = []
        for i in range(ids.shape[0]):
            h = hashlib.blake2b(digest_size=16)
            h.update(ids[i][keep[i]].numpy().tobytes())
            h.update(b"|")
            h.update(labels[i][keep[i]].numpy().tobytes())
            keys.append(h.digest())
        return keys
    if "index" in batch:
        return [b"idx:" + str(int(i)).encode() for i in batch["index"].detach().cpu()]
    tensors = [v.detach().cpu() for v in batch.values() if isinstance(v, torch.Tensor) and v.dim() > 0]
    keys = []
    for i in range(tensors[0].shape[0]):
        h = hashlib.blake2b(digest_size=16)
        for t in tensors:
            h.update(t[i].contiguous().numpy().tobytes())
        keys.append(h.digest())
    return keys


class CachedReference:
    """Per-sample ``log π_ref`` cache with one-pass precomputation and reference release.

    Args:
        mode: ``"precompute"`` or ``"lazy"`` (see the module docstring).
        keep_reference: Keep ``ctx.ref_model`` after the cache is full (e.g. a KL retain
            term still needs it).
        sides: Maps a forget batch to the sub-batches whose reference log-probs are needed
            (NPO: ``[forget]``; IdkDPO: ``[forget, forget["idk"]]``).
        method: Method name, for messages.
    """

    def __init__(self, mode: str, keep_reference: bool, sides: Callable[[dict[str, Any]], list[dict[str, Any]]], method: str) -> None:
        if mode not in CACHE_MODES:
            raise ConfigError(f"{method} ref_cache must be one of {', '.join(CACHE_MODES)}, got '{mode}'")
        self.mode, self.keep_reference, self.sides, self.method = mode, keep_reference, sides, method
        self.values: dict[bytes, float] = {}
        self.seen: set[bytes] = set()
        self.n_forget: int | None = None
        self.ref_forwards = 0  # reference forward passes run so far (diagnostics, tests)

    def __len__(self) -> int:
        return len(self.values)

    # ------------------------------------------------------------------ filling
    def _fill(self, sub: dict[str, Any], ref_model: Any, adapter: Any, rows: list[int] | None = None) -> None:
        if rows is not None:
            sub = select_rows(sub, rows)
        sub = to_device(sub, model_device(ref_model))
        with torch.no_grad():
            logp = adapter.per_sample_logprob(ref_model, sub).double().cpu()  # [b]
        self.ref_forwards += 1
        for key, value in zip(sample_keys(sub), logp.tolist(), strict=True):
            self.values[key] = value

    def setup(self, ctx: Any) -> None:
        """Precompute over ``ctx.extras["forget_dataset"]`` (mode ``"precompute"``), then
        release the reference if allowed."""
        forget_ds = ctx.extras.get("forget_dataset")
        collate = ctx.extras.get("collate_forget")
        self.n_forget = len(forget_ds) if forget_ds is not None else None
        if self.mode != "precompute" or forget_ds is None or collate is None or ctx.ref_model is None:
            if self.mode == "precompute":
                log.info("%s: no forget dataset/collator in the context; reference log-probs are cached lazily", self.method)
            return
        batch_size = max(1, int(ctx.extras.get("ref_batch_size", 8)))
        n = len(forget_ds)
        for start in progress(range(0, n, batch_size), desc=f"{self.method} reference log-probs", unit="batch"):
            batch = collate([forget_ds[i] for i in range(start, min(n, start + batch_size))])
            for sub in self.sides(batch):
                missing = self.missing(sub)
                if missing:
                    self._fill(sub, ctx.ref_model, ctx.adapter, None if len(missing) == len(sample_keys(sub)) else missing)
            self.seen.update(sample_keys(batch))
        log.info("%s: cached reference log-probs of %d forget samples (%d reference passes)", self.method, n, self.ref_forwards)
        self.maybe_release(ctx)

    def missing(self, sub: dict[str, Any]) -> list[int]:
        """Rows of ``sub`` whose reference log-prob is not cached yet."""
        return [i for i, k in enumerate(sample_keys(sub)) if k not in self.values]

    # ------------------------------------------------------------------ serving
    def logprobs(self, forget: dict[str, Any], ctx: Any) -> list[torch.Tensor]:
        """Reference log-probs ``[b]`` of each side of ``forget`` (filling missing rows)."""
        out = []
        device = forget["input_ids"].device if "input_ids" in forget else None
        forget_keys = None
        for sub in self.sides(forget):
            keys = sample_keys(sub)  # one host transfer + hash per side and step
            if sub is forget:
                forget_keys = keys
            missing = [i for i, k in enumerate(keys) if k not in self.values]
            if missing:
                if ctx.ref_model is None:
                    raise RuntimeError(
                        f"{self.method}: {len(missing)} forget samples are not in the reference cache and the reference "
                        "model was already released; was the forget set changed after setup()?"
                    )
                self._fill(sub, ctx.ref_model, ctx.adapter, missing if len(missing) < len(keys) else None)
            out.append(torch.tensor([self.values[k] for k in keys], dtype=torch.float32, device=device))
        self.seen.update(forget_keys if forget_keys is not None else sample_keys(forget))
        self.maybe_release(ctx)
        return out

    def maybe_release(self, ctx: Any) -> None:
        """Drop ``ctx.ref_model`` once every forget sample is cached, unless it is still needed."""
        if self.keep_reference or ctx.ref_model is None or self.n_forget is None:
            return
        if len(self.seen) >= self.n_forget:
            ctx.ref_model = None
            log.info("%s: all %d forget samples cached; reference model released", self.method, self.n_forget)
