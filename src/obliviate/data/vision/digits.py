"""scikit-learn's 8x8 ``digits`` (1,797 images, 10 classes): the embedded default dataset."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from obliviate.registry import DATASETS
from obliviate.data.vision.tensors import TensorImageDataset, VisionData, per_class_rows


@DATASETS.register("digits", track="vision")
def load_digits(test_fraction: float = 0.2, split_seed: int = 0, max_train_per_class: int | None = None, **_: object) -> VisionData:
    """Load digits with a fixed stratified train/test split (never overlapping).

    Args:
        test_fraction: Share of each class held out as the test split.
        split_seed: Seed of the split (independent of the run seed, so every run of a
            project sees the same test set).
        max_train_per_class: Keep at most this many training images per class (a seeded
            subset; the test split is unchanged). A small training set is memorised by the
            model, so random forgetting has something to remove (the quickstart uses it).
    """
    from sklearn.datasets import load_digits as sk_load
    from sklearn.model_selection import train_test_split

    d = sk_load()
    x = torch.tensor(d.images / 16.0, dtype=torch.float32).unsqueeze(1)  # [n, 1, 8, 8]
    y = torch.tensor(d.target, dtype=torch.long)
    idx = np.arange(len(y))
    tr, te = train_test_split(idx, test_size=test_fraction, random_state=split_seed, stratify=d.target)
    tr, te = np.sort(tr), np.sort(te)
    tr = tr[per_class_rows(d.target[tr], max_train_per_class, split_seed)]
    mean, std = (0.3,), (0.4,)
    full = TensorImageDataset(x, y, mean=mean, std=std)
    train = full.subset(tr)
    train.indices = np.arange(len(tr))  # forget/retain indices refer to positions in train
    test = full.subset(te)
    test.indices = np.arange(len(te))
    import sklearn.datasets

    csv = Path(sklearn.datasets.__file__).parent / "data" / "digits.csv.gz"
    return VisionData(train, test, 10, [str(i) for i in range(10)], in_chans=1, image_size=8, source="sklearn.datasets.load_digits",
                      files={"digits": str(csv)} if csv.is_file() else {})
