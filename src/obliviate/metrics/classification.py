"""Vision unlearning metrics (DESIGN §6), all in percent.

- UA = 100 − forget accuracy; RA = retain accuracy; TA = test accuracy. In class-wise
  forgetting TA is measured on the test set without the forgotten class(es), and the
  forgotten classes' test accuracy is reported separately as ``TA_forget_class``.
- Avg. Gap = mean |x − x_retrain| over UA, RA, TA, MIA.
- RTE = unlearning wall-clock seconds (and its ratio to retraining time).

Accuracies are computed over samples (never averaged over batches).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from obliviate.registry import METRICS

GAP_KEYS = ("UA", "RA", "TA", "MIA")


def accuracy(pred: Sequence[int] | np.ndarray, label: Sequence[int] | np.ndarray) -> float:
    """Percentage of ``pred == label`` over all samples (NaN for an empty set)."""
    pred, label = np.asarray(pred), np.asarray(label)
    if len(label) == 0:
        return float("nan")
    return float((pred == label).mean() * 100.0)


@METRICS.register("UA", track="vision", higher_is_better=None, needs=("forget",))
def unlearning_accuracy(pred: np.ndarray, label: np.ndarray) -> float:
    """UA = 100 − accuracy on the forget set (closer to the retrained model is better)."""
    return 100.0 - accuracy(pred, label)


@METRICS.register("RA", track="vision", higher_is_better=True, needs=("retain",))
def retain_accuracy(pred: np.ndarray, label: np.ndarray) -> float:
    """RA = accuracy on the retain set."""
    return accuracy(pred, label)


@METRICS.register("TA", track="vision", higher_is_better=True, needs=("test",))
def test_accuracy(pred: np.ndarray, label: np.ndarray, forget_classes: Sequence[int] | None = None) -> tuple[float, float | None]:
    """TA and, in class-wise forgetting, the forgotten classes' test accuracy.

    Returns:
        ``(TA, TA_forget_class)``; TA excludes the forgotten classes; the second value is
        ``None`` when ``forget_classes`` is empty/None.
    """
    pred, label = np.asarray(pred), np.asarray(label)
    if not forget_classes:
        return accuracy(pred, label), None
    is_forgotten = np.isin(label, list(forget_classes))
    return accuracy(pred[~is_forgotten], label[~is_forgotten]), accuracy(pred[is_forgotten], label[is_forgotten])


@METRICS.register("avg_gap", track="vision", higher_is_better=False, needs=("retrain",))
def avg_gap(metrics: dict[str, float], retrain: dict[str, float], keys: Sequence[str] = GAP_KEYS) -> float:
    """Avg. Gap = mean over ``keys`` of |metrics[k] − retrain[k]|."""
    return float(np.mean([abs(metrics[k] - retrain[k]) for k in keys]))


def per_class_accuracy(pred: np.ndarray, label: np.ndarray, num_classes: int) -> list[float | None]:
    """Accuracy (%) per class; ``None`` for classes absent from ``label``."""
    pred, label = np.asarray(pred), np.asarray(label)
    return [accuracy(pred[label == c], label[label == c]) if (label == c).any() else None for c in range(num_classes)]
