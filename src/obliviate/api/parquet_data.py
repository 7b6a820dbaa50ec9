"""``ImageNetDataManager`` (seed 004): load parquet train/val sets once, split by class fast."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from obliviate.data.selection import check_no_overlap
from obliviate.data.vision.parquet import ParquetImageDataset, labels_of, load_parquet_images
from obliviate.errors import DataError


class ImageNetDataManager:
    """Holds a parquet train and validation set (Hugging Face image layout), loaded once.

    Files are read on construction through ``datasets`` (memory-mapped); every
    :meth:`get_loaders` call afterwards only builds index lists, so trying several forget
    classes or transforms costs nothing extra. The forget and retain sets both come from the
    *training* files and never share a row; the validation loader covers every class.

    Args:
        train_glob: Glob (or directory, or list) of the training parquet files.
        val_glob: Glob (or directory, or list) of the validation parquet files.
        image_column, label_column: Column names (default ``image`` / ``label``).
        cache_dir: ``datasets`` cache directory.
        keep_in_memory: Load the Arrow tables into RAM instead of memory-mapping them.

    Raises:
        DataError: A glob matches no file or the files lack the expected columns.

    Example:
        >>> dm = ImageNetDataManager("train/*.parquet", "val/*.parquet")  # doctest: +SKIP
        >>> val_loader, forget_loader, retain_loader = dm.get_loaders(forget_class=9, transforms=tf)  # doctest: +SKIP
    """

    def __init__(self, train_glob: str | Sequence[str], val_glob: str | Sequence[str], *, image_column: str = "image",
                 label_column: str = "label", cache_dir: str | None = None, keep_in_memory: bool = False) -> None:
        kw = {"image_column": image_column, "label_column": label_column, "cache_dir": cache_dir, "keep_in_memory": keep_in_memory}
        self.image_column, self.label_column = image_column, label_column
        self.train = load_parquet_images(train_glob, **kw)
        self.val = load_parquet_images(val_glob, **kw)
        self.train_labels = labels_of(self.train, label_column)  # [n_train]
        self.val_labels = labels_of(self.val, label_column)  # [n_val]

    @property
    def classes(self) -> list[int]:
        """Sorted labels present in the training files."""
        return sorted(np.unique(self.train_labels).tolist())

    def split_indices(self, forget_class: int | Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """Training rows of the forget class(es) and of every other class (disjoint).

        Raises:
            DataError: A class does not occur in the training files.
        """
        classes = [int(forget_class)] if np.isscalar(forget_class) else [int(c) for c in forget_class]
        if not classes:
            raise DataError("forget_class is empty; give a class label (int) or a list of them")
        absent = [c for c in classes if c not in set(self.classes)]
        if absent:
            shown = self.classes if len(self.classes) <= 20 else [*self.classes[:20], "..."]
            raise DataError(f"forget_class {absent} does not occur in the training files; present labels: {shown}")
        is_forget = np.isin(self.train_labels, classes)
        forget_idx, retain_idx = np.flatnonzero(is_forget), np.flatnonzero(~is_forget)
        check_no_overlap(forget_idx.tolist(), retain_idx.tolist(), what="training row")
        if len(retain_idx) == 0:
            raise DataError("every training sample belongs to the forget class; the retain set would be empty")
        return forget_idx, retain_idx

    def get_loaders(self, forget_class: int | Sequence[int], transforms: Callable | None = None, batch_size: int = 64, *,
                    eval_transforms: Callable | None = None, num_workers: int = 0, shuffle: bool = True, seed: int = 0,
                    **loader_kwargs: Any) -> tuple[DataLoader, DataLoader, DataLoader]:
        """Build ``(val_loader, forget_loader, retain_loader)``; batches are ``(images, labels)``.

        Args:
            forget_class: Label (or labels) to forget.
            transforms: PIL image -> tensor transform for all three loaders (e.g. timm's
                ``create_transform(..., is_training=False)``); default: plain [0, 1] tensors.
            batch_size: Batch size of every loader.
            eval_transforms: Transform of the validation loader if it should differ.
            num_workers: DataLoader workers.
            shuffle: Shuffle the forget and retain loaders (seeded); validation never is.
            seed: Seed of the shuffling.
            **loader_kwargs: Passed to every ``DataLoader`` (``pin_memory``, ...).
        """
        forget_idx, retain_idx = self.split_indices(forget_class)
        cols = {"image_column": self.image_column, "label_column": self.label_column}
        val = ParquetImageDataset(self.val, None, eval_transforms or transforms, **cols)
        forget = ParquetImageDataset(self.train, forget_idx, transforms, **cols)
        retain = ParquetImageDataset(self.train, retain_idx, transforms, **cols)

        def loader(ds: ParquetImageDataset, shuffled: bool, offset: int) -> DataLoader:
            gen = torch.Generator().manual_seed(int(seed) + offset) if shuffled else None
            return DataLoader(ds, batch_size=batch_size, shuffle=shuffled, generator=gen, num_workers=num_workers, **loader_kwargs)

        return loader(val, False, 0), loader(forget, shuffle, 1), loader(retain, shuffle, 2)
