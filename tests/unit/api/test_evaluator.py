"""ImageNetEvaluator: run once, metrics over samples, clear error before run()."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from obliviate.vision import ImageNetEvaluator


class FixedLogits(nn.Module):
    """Returns stored logits for the images' first pixel value (an index)."""

    def __init__(self, logits):
        super().__init__()
        self.logits = torch.as_tensor(logits, dtype=torch.float32)
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        return self.logits[x[:, 0].long()]


def loader(labels, batch_size):
    idx = torch.arange(len(labels)).float()[:, None]
    y = torch.as_tensor(labels)
    return [(idx[i : i + batch_size], y[i : i + batch_size]) for i in range(0, len(labels), batch_size)]


def test_metrics_are_over_samples_not_batches():
    # 5 samples, batches of 4 + 1: batch-mean accuracy would be (2/4 + 1/1)/2 = 75%, sample mean 60%.
    logits = [[3, 0, 0], [3, 0, 0], [0, 3, 0], [0, 3, 0], [0, 0, 3]]
    labels = [0, 1, 1, 0, 2]
    ev = ImageNetEvaluator(FixedLogits(logits), loader(labels, 4), device="cpu", forget_class=0).run()
    assert ev.top1_accuracy() == pytest.approx(60.0)
    assert ev.top5_accuracy() == pytest.approx(100.0)  # k capped at 3 classes
    assert ev.forget_accuracy() == pytest.approx(50.0)
    assert ev.retain_accuracy() == pytest.approx(200 / 3)
    p_hi = math.exp(3) / (math.exp(3) + 2)
    p_lo = 1 / (math.exp(3) + 2)
    assert ev.forget_confidence() == pytest.approx((p_hi + p_lo) / 2, rel=1e-5)
    ent = -(p_hi * math.log(p_hi) + 2 * p_lo * math.log(p_lo))
    assert ev.forget_entropy() == pytest.approx(ent, rel=1e-5)
    assert ev.logit_margin() == pytest.approx((3 + -3) / 2)
    assert ev.per_class_accuracy() == {0: 50.0, 1: 50.0, 2: 100.0}


def test_runtime_error_before_run_and_summary_keys():
    ev = ImageNetEvaluator(FixedLogits([[1, 0]]), loader([0], 1), device="cpu", forget_class=0)
    for metric in (ev.top1_accuracy, ev.summary, ev.forget_entropy, ev.per_class_accuracy):
        with pytest.raises(RuntimeError, match="call run\\(\\)"):
            metric()
    summary = ev.run().summary()
    assert {"top1_accuracy", "top5_accuracy", "forget_accuracy", "retain_accuracy", "forget_confidence",
            "forget_entropy", "logit_margin", "num_samples", "num_forget_samples"} <= set(summary)
    assert np.isnan(summary["retain_accuracy"])  # no other class in this validation set


def test_forget_metrics_need_a_forget_class():
    ev = ImageNetEvaluator(FixedLogits([[1, 0]]), loader([0], 1), device="cpu").run()
    assert "forget_accuracy" not in ev.summary()
    with pytest.raises(ValueError, match="forget_class"):
        ev.forget_confidence()
