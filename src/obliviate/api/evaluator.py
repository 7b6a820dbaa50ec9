"""``ImageNetEvaluator`` (seed 004): one forward pass, then any metric from the cache.

Every metric is computed over *samples* (never averaged over batches) from per-sample values
kept after :meth:`ImageNetEvaluator.run`. Accuracies are percentages; confidences are
probabilities in [0, 1]; entropy is in nats.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn


def default_device() -> str:
    """``"cuda"`` when available, else ``"cpu"``."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def split_batch(batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images, labels)`` from a tuple/list batch or a dict batch (``pixel_values``/``image``, ``labels``/``label``)."""
    if isinstance(batch, dict):
        x = batch.get("pixel_values", batch.get("image"))
        y = batch.get("labels", batch.get("label"))
        if x is None or y is None:
            raise ValueError(f"cannot find images/labels in a batch with keys {sorted(batch)}")
        return x, torch.as_tensor(y)
    if isinstance(batch, (list, tuple)) and len(batch) >= 2:
        return batch[0], torch.as_tensor(batch[1])
    raise ValueError("batches must be (images, labels) tuples or dicts with 'pixel_values' and 'labels'")


def logits_of(output: Any) -> torch.Tensor:
    """Logits from a plain tensor output or an object/dict with ``logits``."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, dict):
        return output["logits"]
    return output.logits


class ImageNetEvaluator:
    """Evaluate a classifier on a validation loader, with forget-class diagnostics.

    Args:
        model: The classifier (moved to ``device``; its train/eval mode is restored).
        val_loader: Loader of ``(images, labels)`` (or dict) batches.
        device: Torch device (default: CUDA when available).
        forget_class: The forgotten class (or classes); forget metrics need it.
        topk: ``k`` of the top-k accuracy (capped at the number of classes).

    Example:
        >>> ev = ImageNetEvaluator(model, val_loader, device="cpu", forget_class=9)  # doctest: +SKIP
        >>> ev.run(); print(ev.summary())  # doctest: +SKIP
    """

    def __init__(self, model: nn.Module, val_loader: Iterable, device: str | torch.device | None = None,
                 forget_class: int | Sequence[int] | None = None, topk: int = 5) -> None:
        self.model, self.val_loader = model, val_loader
        self.device = torch.device(device or default_device())
        if forget_class is None:
            self.forget_classes: list[int] = []
        else:
            self.forget_classes = [int(forget_class)] if np.isscalar(forget_class) else [int(c) for c in forget_class]
        self.topk = int(topk)
        self._cache: dict[str, np.ndarray] | None = None
        self.num_classes: int | None = None

    # ------------------------------------------------------------------------- the pass
    @torch.no_grad()
    def run(self) -> "ImageNetEvaluator":
        """One forward pass over the loader; caches per-sample values. Returns ``self``."""
        was_training = self.model.training
        self.model.to(self.device).eval()
        parts: dict[str, list[np.ndarray]] = {k: [] for k in ("label", "pred", "topk_hit", "entropy", "true_prob", "margin")}
        try:
            for batch in self.val_loader:
                x, y = split_batch(batch)
                logits = logits_of(self.model(x.to(self.device))).float()  # [b, C]
                y = y.to(logits.device).long()
                self.num_classes = logits.shape[-1]
                logp = torch.log_softmax(logits, -1)
                k = min(self.topk, logits.shape[-1])
                true_logit = logits.gather(1, y[:, None]).squeeze(1)
                other = logits.scatter(1, y[:, None], float("-inf")).max(-1).values if logits.shape[-1] > 1 else torch.zeros_like(true_logit)
                parts["label"].append(y.cpu().numpy())
                parts["pred"].append(logits.argmax(-1).cpu().numpy())
                parts["topk_hit"].append((logits.topk(k, -1).indices == y[:, None]).any(-1).cpu().numpy())
                parts["entropy"].append((-(logp.exp() * logp).sum(-1)).cpu().numpy())
                parts["true_prob"].append(logp.gather(1, y[:, None]).squeeze(1).exp().cpu().numpy())
                parts["margin"].append((true_logit - other).cpu().numpy())
        finally:
            self.model.train(was_training)
        if not parts["label"]:
            raise ValueError("the validation loader yielded no batches")
        self._cache = {k: np.concatenate(v) for k, v in parts.items()}
        return self

    def _values(self) -> dict[str, np.ndarray]:
        if self._cache is None:
            raise RuntimeError("ImageNetEvaluator: call run() before asking for metrics (run() does the forward pass once)")
        return self._cache

    def _forget_rows(self) -> np.ndarray:
        v = self._values()
        if not self.forget_classes:
            raise ValueError("this metric needs forget_class=...; pass it to ImageNetEvaluator(...)")
        return np.isin(v["label"], self.forget_classes)

    @staticmethod
    def _mean(values: np.ndarray) -> float:
        return float(values.mean()) if len(values) else math.nan

    # ------------------------------------------------------------------------- metrics
    def top1_accuracy(self) -> float:
        """Top-1 accuracy (%) over all validation samples."""
        v = self._values()
        return 100.0 * self._mean((v["pred"] == v["label"]).astype(np.float64))

    def top5_accuracy(self) -> float:
        """Top-k accuracy (%) over all samples (``k = topk``, 5 by default, capped at the class count)."""
        return 100.0 * self._mean(self._values()["topk_hit"].astype(np.float64))

    def forget_accuracy(self) -> float:
        """Top-1 accuracy (%) on validation samples of the forget class(es)."""
        v, rows = self._values(), self._forget_rows()
        return 100.0 * self._mean((v["pred"][rows] == v["label"][rows]).astype(np.float64))

    def retain_accuracy(self) -> float:
        """Top-1 accuracy (%) on validation samples of every other class."""
        v, rows = self._values(), ~self._forget_rows()
        return 100.0 * self._mean((v["pred"][rows] == v["label"][rows]).astype(np.float64))

    def forget_confidence(self) -> float:
        """Mean softmax probability of the true (forgotten) class over forget-class samples."""
        return self._mean(self._values()["true_prob"][self._forget_rows()])

    def forget_entropy(self) -> float:
        """Mean predictive entropy (nats) over forget-class samples (higher = less certain)."""
        return self._mean(self._values()["entropy"][self._forget_rows()])

    def logit_margin(self, subset: str = "forget") -> float:
        """Mean of (true-class logit − largest other logit) over ``subset``.

        Args:
            subset: ``"forget"`` (forget-class samples), ``"retain"`` (the others) or ``"all"``.
        """
        m = self._values()["margin"]
        if subset == "all":
            return self._mean(m)
        if subset not in ("forget", "retain"):
            raise ValueError(f"subset must be 'forget', 'retain' or 'all', got '{subset}'")
        rows = self._forget_rows()
        return self._mean(m[rows if subset == "forget" else ~rows])

    def per_class_accuracy(self) -> dict[int, float]:
        """Top-1 accuracy (%) of every class present in the validation set."""
        v = self._values()
        return {int(c): 100.0 * self._mean((v["pred"][v["label"] == c] == c).astype(np.float64)) for c in np.unique(v["label"])}

    def summary(self) -> dict[str, Any]:
        """All scalar metrics as a JSON-ready dict (forget metrics only with ``forget_class``)."""
        v = self._values()
        out: dict[str, Any] = {
            "num_samples": int(len(v["label"])),
            "top1_accuracy": self.top1_accuracy(),
            "top5_accuracy": self.top5_accuracy(),
        }
        if self.forget_classes:
            out.update({
                "forget_class": self.forget_classes[0] if len(self.forget_classes) == 1 else list(self.forget_classes),
                "num_forget_samples": int(self._forget_rows().sum()),
                "forget_accuracy": self.forget_accuracy(),
                "retain_accuracy": self.retain_accuracy(),
                "forget_confidence": self.forget_confidence(),
                "forget_entropy": self.forget_entropy(),
                "logit_margin": self.logit_margin(),
            })
        return out
