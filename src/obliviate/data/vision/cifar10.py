"""CIFAR-10 from a folder ``{train,test}/<class>/*.jpg`` or from the two tarballs.

``path`` may be a directory with ``train/`` and ``test/`` sub-folders, or a directory holding
``cifar10_train_jpg.tar.gz`` and ``cifar10_test_jpg.tar.gz`` (the layout of
``shared/data/cifar10_jpg``). Decoded arrays are cached as ``.npz`` under ``cache_dir``.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from obliviate.registry import DATASETS
from obliviate.data.vision.tensors import TensorImageDataset, VisionData, per_class_rows
from obliviate.errors import DataError
from obliviate.io import atomic_write_bytes

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def _decode(data: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.uint8)


def _read_split(root: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Read one split as (images [n, 32, 32, 3] uint8, labels [n]), files sorted by name."""
    folder = root / split
    tarball = root / f"cifar10_{split}_jpg.tar.gz"
    entries: list[tuple[str, bytes]] = []
    if folder.is_dir():
        for p in sorted(folder.glob("*/*.jpg")):
            entries.append((f"{p.parent.name}/{p.name}", p.read_bytes()))
    elif tarball.is_file():
        with tarfile.open(tarball, "r:gz") as tar:
            for m in tar:
                if m.isfile() and m.name.endswith(".jpg"):
                    parts = Path(m.name).parts
                    entries.append((f"{parts[-2]}/{parts[-1]}", tar.extractfile(m).read()))  # type: ignore[union-attr]
        entries.sort()
    else:
        raise DataError(
            f"CIFAR-10 {split} split not found under '{root}': expected '{folder}/<class>/*.jpg' "
            f"or '{tarball}'; set paths.cifar10=DIR"
        )
    if not entries:
        raise DataError(f"no .jpg images in the CIFAR-10 {split} split under '{root}'")
    labels = []
    for name, _ in entries:
        cls = name.split("/")[0]
        if cls not in CLASSES:
            raise DataError(f"unknown CIFAR-10 class folder '{cls}' in '{root}'; expected one of {CLASSES}")
        labels.append(CLASSES.index(cls))
    images = np.stack([_decode(b) for _, b in tqdm(entries, desc=f"decode cifar10 {split}", leave=False)])
    return images, np.asarray(labels, dtype=np.int64)


def _cached_split(root: Path, split: str, cache_dir: Path | None) -> tuple[np.ndarray, np.ndarray]:
    if cache_dir is None:
        return _read_split(root, split)
    key = hashlib.sha1(str(root.resolve()).encode()).hexdigest()[:12]
    cache = Path(cache_dir).expanduser() / f"cifar10_{split}_{key}.npz"
    if cache.is_file():
        with np.load(cache) as z:
            return z["images"], z["labels"]
    images, labels = _read_split(root, split)
    buf = io.BytesIO()
    np.savez(buf, images=images, labels=labels)
    atomic_write_bytes(cache, buf.getvalue())
    return images, labels


def _per_class(labels: np.ndarray, k: int | None, seed: int) -> np.ndarray:
    return per_class_rows(labels, k, seed)


@DATASETS.register("cifar10", track="vision")
def load_cifar10(
    path: str | None = None,
    cache_dir: str | None = None,
    max_train_per_class: int | None = None,
    max_test_per_class: int | None = None,
    augment: bool = True,
    split_seed: int = 0,
    **_: object,
) -> VisionData:
    """Load CIFAR-10 (optionally a per-class subset, for fast tests and benchmarks)."""
    if not path:
        raise DataError("CIFAR-10 needs a local copy: set paths.cifar10=DIR (a {train,test}/<class>/*.jpg folder or the tarball folder)")
    root = Path(path).expanduser()
    if not root.is_dir():
        raise DataError(f"paths.cifar10='{root}' is not a directory")
    parts = {}
    for split, k in (("train", max_train_per_class), ("test", max_test_per_class)):
        images, labels = _cached_split(root, split, Path(cache_dir) if cache_dir else None)
        rows = _per_class(labels, k, split_seed)
        x = torch.from_numpy(images[rows]).permute(0, 3, 1, 2).contiguous()  # [n, 3, 32, 32] uint8
        parts[split] = TensorImageDataset(x, torch.from_numpy(labels[rows]), mean=MEAN, std=STD)
    files = {f"cifar10_{s}": str(root / f"cifar10_{s}_jpg.tar.gz") for s in ("train", "test") if (root / f"cifar10_{s}_jpg.tar.gz").is_file()}
    return VisionData(parts["train"], parts["test"], 10, list(CLASSES), in_chans=3, image_size=32, source=str(root), augment_train=augment,
                      files=files or {"cifar10_dir": str(root)})
