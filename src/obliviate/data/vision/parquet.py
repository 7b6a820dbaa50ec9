"""Image datasets stored as parquet in the Hugging Face layout (ImageNet-style).

Every file has an ``image`` column (a struct with ``bytes`` and an optional ``path``, as
written by ``datasets``' ``Image`` feature) and an integer ``label`` column. Files are read
through :mod:`datasets` once (memory-mapped Arrow, so ImageNet-size sets fit), and images are
decoded lazily with PIL when an item is accessed.

Two entry points:

- :func:`load_parquet_images` + :class:`ParquetImageDataset`: the lazily decoding PyTorch
  dataset behind the seed-004 ``ImageNetDataManager``;
- the registered dataset ``parquet`` (``data=parquet data.train=GLOB data.test=GLOB``) for the
  CLI, which decodes and resizes every image once into memory (small sets only).
"""

from __future__ import annotations

import glob as globlib
import io
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from obliviate.registry import DATASETS
from obliviate.data.vision.tensors import TensorImageDataset, VisionData
from obliviate.errors import DataError


def resolve_files(pattern: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    """Parquet files matching a glob, a directory (``*.parquet`` inside) or a list of paths.

    Raises:
        DataError: Nothing matches.
    """
    if isinstance(pattern, (list, tuple)):
        files = [f for p in pattern for f in resolve_files(p)]
    else:
        text = os.path.expanduser(str(pattern))
        if os.path.isdir(text):
            text = os.path.join(text, "*.parquet")
        files = sorted(globlib.glob(text, recursive=True))
    if not files:
        raise DataError(f"no parquet files match '{pattern}'; give a glob such as 'train/*.parquet' or a directory")
    return files


def load_parquet_images(pattern: str | Sequence[str], *, image_column: str = "image", label_column: str = "label",
                        cache_dir: str | None = None, keep_in_memory: bool = False) -> Any:
    """Load parquet files as one ``datasets.Dataset`` whose image column is *not* decoded.

    Args:
        pattern: Glob, directory or list of parquet files.
        image_column: Column holding ``{"bytes", "path"}`` structs (or raw bytes).
        label_column: Integer label column.
        cache_dir: ``datasets`` cache directory (default: the Hugging Face cache).
        keep_in_memory: Keep the Arrow table in RAM instead of memory-mapping the cache.

    Raises:
        DataError: No files, or a missing/ill-typed column.
    """
    import datasets

    files = resolve_files(pattern)
    try:
        ds = datasets.Dataset.from_parquet(files, cache_dir=cache_dir, keep_in_memory=keep_in_memory)
    except Exception as exc:  # unreadable / not parquet
        raise DataError(f"could not read parquet files {files[:2]}: {type(exc).__name__}: {exc}") from None
    missing = [c for c in (image_column, label_column) if c not in ds.column_names]
    if missing:
        raise DataError(f"parquet files {files[:2]} lack column(s) {missing}; found {ds.column_names}. "
                        "Expected the Hugging Face image layout: 'image' {bytes, path} and integer 'label'")
    try:
        ds = ds.cast_column(image_column, datasets.Image(decode=False))
    except Exception as exc:
        raise DataError(f"column '{image_column}' of {files[:2]} is not an image column (struct with 'bytes'): {exc}") from None
    labels = ds.data.column(label_column)
    if not (str(labels.type).startswith("int") or str(labels.type).startswith("uint")):
        raise DataError(f"column '{label_column}' must hold integers, found {labels.type}")
    return ds


def decode_image(cell: Any, mode: str | None = "RGB") -> Any:
    """PIL image from a ``{"bytes", "path"}`` cell (or raw bytes); converted to ``mode``."""
    from PIL import Image

    data = cell.get("bytes") if isinstance(cell, dict) else cell
    path = cell.get("path") if isinstance(cell, dict) else None
    if data is not None:
        img = Image.open(io.BytesIO(data))
    elif path:
        img = Image.open(path)
    else:
        raise DataError("an image cell has neither bytes nor a path")
    return img.convert(mode) if mode else img


def pil_to_tensor(img: Any) -> torch.Tensor:
    """Default transform: PIL image -> float tensor ``[c, h, w]`` in [0, 1]."""
    arr = np.asarray(img, dtype=np.float32) / 255.0
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return torch.from_numpy(arr.transpose(2, 0, 1).copy())


class ParquetImageDataset(Dataset):
    """Rows of a parquet-backed ``datasets.Dataset`` as ``(image_tensor, label)`` pairs.

    Args:
        hf_dataset: From :func:`load_parquet_images` (shared, never modified).
        indices: Rows of ``hf_dataset`` in this dataset (default: all).
        transforms: Callable PIL image -> tensor (e.g. timm's ``create_transform``);
            default :func:`pil_to_tensor`.
        image_column, label_column: Column names.
        mode: PIL mode images are converted to (``None`` keeps the stored mode).
    """

    def __init__(self, hf_dataset: Any, indices: Sequence[int] | np.ndarray | None = None, transforms: Callable | None = None,
                 *, image_column: str = "image", label_column: str = "label", mode: str | None = "RGB") -> None:
        self.hf = hf_dataset
        self.indices = np.arange(len(hf_dataset)) if indices is None else np.asarray(indices, dtype=np.int64)
        self.transforms = transforms or pil_to_tensor
        self.image_column, self.label_column, self.mode = image_column, label_column, mode

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        row = self.hf[int(self.indices[i])]
        return self.transforms(decode_image(row[self.image_column], self.mode)), int(row[self.label_column])


def labels_of(hf_dataset: Any, label_column: str = "label") -> np.ndarray:
    """The label column as an int64 array (read once from Arrow)."""
    return np.asarray(hf_dataset.data.column(label_column).to_numpy(), dtype=np.int64)


def _to_tensors(ds: Any, image_size: int, mode: str, max_per_class: int | None, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    from PIL import Image

    labels = labels_of(ds)
    rows = np.arange(len(labels))
    if max_per_class:
        rng = np.random.default_rng(seed)
        rows = np.sort(np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:max_per_class] for c in np.unique(labels)]))
    images = []
    for r in rows:
        img = decode_image(ds[int(r)]["image"], mode).resize((image_size, image_size), Image.BILINEAR)
        arr = np.asarray(img, dtype=np.uint8)
        images.append(arr[:, :, None] if arr.ndim == 2 else arr)
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()  # [n, c, s, s] uint8
    return x, torch.from_numpy(labels[rows])


@DATASETS.register("parquet", track="vision")
def load_parquet_vision(train: str | None = None, test: str | None = None, image_size: int = 32, mode: str = "RGB",
                        max_train_per_class: int | None = None, max_test_per_class: int | None = None,
                        num_classes: int | None = None, mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                        cache_dir: str | None = None, augment: bool = False, split_seed: int = 0, **_: object) -> VisionData:
    """Parquet train/test globs decoded into memory at ``image_size`` (for the CLI; small sets).

    Args:
        train, test: Globs/directories of the two splits.
        image_size: Square size images are resized to.
        mode: PIL mode ("RGB" or "L").
        max_train_per_class, max_test_per_class: Optional per-class subsets (seeded).
        num_classes: Number of classes (default: ``max(label) + 1`` over both splits).
        mean, std: Normalisation (default: ImageNet's for RGB, 0.5/0.5 for "L").
    """
    if not train or not test:
        raise DataError("the parquet dataset needs data.train=GLOB and data.test=GLOB")
    parts = {}
    for split, pattern, k in (("train", train, max_train_per_class), ("test", test, max_test_per_class)):
        parts[split] = _to_tensors(load_parquet_images(pattern, cache_dir=cache_dir), image_size, mode, k, split_seed)
    chans = 1 if mode == "L" else 3
    mean = tuple(mean) if mean else ((0.5,) if chans == 1 else (0.485, 0.456, 0.406))
    std = tuple(std) if std else ((0.5,) if chans == 1 else (0.229, 0.224, 0.225))
    n_cls = int(num_classes or max(int(parts["train"][1].max()), int(parts["test"][1].max())) + 1)
    train_ds, test_ds = (TensorImageDataset(*parts[s], mean=mean, std=std) for s in ("train", "test"))
    return VisionData(train_ds, test_ds, n_cls, [str(i) for i in range(n_cls)], in_chans=chans, image_size=image_size,
                      source=str(Path(str(train)).parent), augment_train=augment)
