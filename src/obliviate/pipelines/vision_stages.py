"""The first stages of a vision job and prediction, shared by every vision pipeline.

load data -> select the forget set -> build the model, and one forward pass over a dataset
(:func:`predict`). :mod:`obliviate.pipelines.vision` (unlearning), :mod:`~obliviate.pipelines.prune`
and :mod:`~obliviate.pipelines.prune_structured` (pruning) and the tuner use them; nothing here
imports another pipeline, so the pipelines above never call back into each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.utils.data import DataLoader
from transformers import set_seed

from obliviate.data import DATASETS, select_forget, stack_collate
from obliviate.data.selection import class_indices
from obliviate.data.vision import TensorImageDataset, VisionData
from obliviate.distributed import place_on_accelerator
from obliviate.models import build_vision_model

__all__ = ["Split", "build_model", "load_data", "predict", "split_forget"]


def load_data(cfg: DictConfig) -> VisionData:
    """Load the configured vision dataset (``cfg.data``)."""
    data_cfg = OmegaConf.to_container(cfg.data, resolve=True)
    name = data_cfg.pop("name")
    return DATASETS.get(name)(**data_cfg)


@dataclass
class Split:
    """Forget/retain split of the training set (positions into ``data.train``)."""

    forget_idx: np.ndarray
    retain_idx: np.ndarray
    forget_classes: list[int]
    forget: TensorImageDataset
    retain: TensorImageDataset


def split_forget(data: VisionData, selection: dict[str, Any], seed: int) -> Split:
    """Select the forget set from the training split (never from the test split)."""
    labels = data.train.labels.numpy()
    forget_idx, retain_idx = select_forget(labels, seed=seed, class_names=data.class_names, **selection)
    fc = selection.get("forget_class")
    classes = [] if fc is None else class_indices(fc, data.class_names)
    return Split(forget_idx, retain_idx, classes, data.train.subset(forget_idx), data.train.subset(retain_idx))


def build_model(cfg: DictConfig, data: VisionData, seed: int) -> nn.Module:
    """Build the configured model with a seeded initialisation.

    In a single-process run on a GPU machine it goes to the GPU
    (:func:`obliviate.distributed.accelerator_device`), so a model loaded from a checkpoint
    and only evaluated runs there too (the Trainer moves a model it trains).
    """
    set_seed(seed)
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    builder = model_cfg.pop("builder")
    model_cfg.pop("track", None)
    model = build_vision_model(builder, num_classes=data.num_classes, in_chans=data.in_chans, **model_cfg)
    return place_on_accelerator(model, f"vision model {builder}")


@torch.no_grad()
def predict(model: nn.Module, dataset: TensorImageDataset, batch_size: int = 512) -> dict[str, np.ndarray]:
    """One forward pass over ``dataset``: index, label, prediction, true-class confidence, loss."""
    model.eval()
    device = next(model.parameters()).device  # a model the Trainer trained stays on its GPU
    out: dict[str, list] = {"index": [], "label": [], "pred": [], "confidence": [], "loss": []}
    for batch in DataLoader(dataset.with_augment(False), batch_size=batch_size, collate_fn=stack_collate):
        logits = model(batch["pixel_values"].to(device)).float().cpu()  # [b, C]
        logp = torch.log_softmax(logits, -1)
        y = batch["labels"]
        true_logp = logp.gather(1, y[:, None]).squeeze(1)
        out["index"].append(batch["index"].numpy())
        out["label"].append(y.numpy())
        out["pred"].append(logits.argmax(-1).numpy())
        out["confidence"].append(true_logp.exp().numpy())
        out["loss"].append((-true_logp).numpy())
    return {k: np.concatenate(v) if v else np.zeros(0) for k, v in out.items()}
