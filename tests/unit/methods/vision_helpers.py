"""Tiny digits data, a tiny trained CNN and trainer plumbing for the vision method tests."""

from __future__ import annotations

import copy
import functools
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import TrainingArguments

from obliviate.data import ForgetRetainDataset, PairCollator
from obliviate.data.vision import VisionData
from obliviate.engine import UnlearningTrainer
from obliviate.methods.base import MethodContext
from obliviate.models.adapters import ClassifierAdapter
from obliviate.models.vision import DigitsCNN
from obliviate.pipelines import vision

N_CLASSES = 10
ADAPTER = ClassifierAdapter(N_CLASSES)


@functools.lru_cache(maxsize=None)
def digits(n_train: int = 160) -> VisionData:
    """The first ``n_train`` images of the digits train split (all classes) and 100 test images."""
    from obliviate.data.vision.digits import load_digits

    full = load_digits()
    return VisionData(full.train.subset(np.arange(n_train)), full.test.subset(np.arange(100)), N_CLASSES,
                      [str(i) for i in range(N_CLASSES)], in_chans=1, image_size=8)


def split(selection: dict[str, Any] | None = None) -> vision.Split:
    """Forget/retain split of :func:`digits` (default: class 0, about 16 images)."""
    return vision.split_forget(digits(), selection or {"forget_class": 0}, seed=0)


@functools.lru_cache(maxsize=None)
def _trained_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = DigitsCNN(num_classes=N_CLASSES, in_chans=1, width=4)
    data = digits().train
    x = torch.stack([data[i]["pixel_values"] for i in range(len(data))])
    y = data.labels
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(60):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return copy.deepcopy(model.state_dict())


def trained_cnn() -> nn.Module:
    """A DigitsCNN (width 4, ~2.6k parameters) fitted to :func:`digits`, in eval mode."""
    model = DigitsCNN(num_classes=N_CLASSES, in_chans=1, width=4)
    model.load_state_dict(_trained_state())
    return model.eval()


def batch_of(dataset, rows: list[int] | None = None) -> dict[str, torch.Tensor]:
    """Stack items of ``dataset`` (all rows by default) into a batch."""
    rows = list(range(len(dataset))) if rows is None else rows
    items = [dataset[i] for i in rows]
    return {"pixel_values": torch.stack([it["pixel_values"] for it in items]), "labels": torch.stack([it["labels"] for it in items]),
            "index": torch.tensor([it["index"] for it in items])}


def train_args(tmp_path, **overrides: Any) -> TrainingArguments:
    kw = dict(output_dir=str(tmp_path), per_device_train_batch_size=8, learning_rate=1e-3, max_steps=3, weight_decay=0.0,
              report_to="none", save_strategy="no", logging_strategy="no", disable_tqdm=True, use_cpu=True,
              dataloader_pin_memory=False, seed=0)
    kw.update(overrides)
    return TrainingArguments(**kw)


def make_trainer(model: nn.Module, method, sp: vision.Split, tmp_path, **overrides: Any) -> UnlearningTrainer:
    """An UnlearningTrainer over the pairs of ``sp`` (the same wiring as ``pipelines.vision.unlearn``)."""
    pairs = ForgetRetainDataset(sp.forget, sp.retain if method.needs_retain else None, anchor=method.anchor, seed=0,
                                retain_fraction=getattr(method, "retain_fraction", 1.0))
    return UnlearningTrainer(model, train_args(tmp_path, **overrides), method=method, adapter=ADAPTER, train_dataset=pairs,
                             data_collator=PairCollator())


def context(ref_model: nn.Module | None = None, **extras: Any) -> MethodContext:
    return MethodContext(adapter=ADAPTER, ref_model=ref_model, extras=dict(extras))
