"""Your own images: a folder ``{train,test}/<class>/*`` (``data=imagefolder data.path=DIR``).

The layout of torchvision's ``ImageFolder`` with the two splits side by side::

    DIR/train/cat/0001.jpg   DIR/train/dog/0002.png   ...
    DIR/test/cat/0100.jpg    DIR/test/dog/0101.png    ...

Class names are the sub-folder names of ``train/`` (sorted; the label is the position in that
list), and ``test/`` may hold only those classes. Images of any format PIL reads (.jpg, .jpeg,
.png, .bmp, .gif, .tif, .tiff, .webp) are decoded once, converted to ``mode`` and resized to
``image_size`` x ``image_size`` in memory (keep sets small, or use ``max_*_per_class``); the
decoded arrays are cached as ``.npz`` under ``cache_dir``, keyed by the folder's file list and
modification times. Forget classes may be given by name: ``forget_class=cat``.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from obliviate.data import DATASETS
from obliviate.data.vision.tensors import TensorImageDataset, VisionData
from obliviate.errors import DataError
from obliviate.io import atomic_write_bytes

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def list_images(split_dir: Path, classes: Sequence[str] | None = None) -> tuple[list[Path], list[int], list[str]]:
    """Image files of one split, sorted by (class, file name), their labels, and the class names.

    Args:
        split_dir: ``DIR/train`` or ``DIR/test``.
        classes: The class names (from ``train/``); ``None`` reads them from ``split_dir``.

    Raises:
        DataError: a missing folder, no class folders, an unknown class, or no images.
    """
    if not split_dir.is_dir():
        raise DataError(f"image folder split '{split_dir}' does not exist; expected DIR/train/<class>/*.jpg and DIR/test/<class>/*.jpg")
    found = sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not found:
        raise DataError(f"'{split_dir}' has no class sub-folders; expected {split_dir}/<class>/<image files>")
    if classes is None:
        classes = found
    unknown = [c for c in found if c not in classes]
    if unknown:
        raise DataError(f"'{split_dir}' has class folder(s) {unknown} that train/ does not have ({list(classes)})")
    files, labels = [], []
    for label, name in enumerate(classes):
        folder = split_dir / name
        if not folder.is_dir():
            continue
        for path in sorted(folder.iterdir()):
            if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
                files.append(path)
                labels.append(label)
    if not files:
        raise DataError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under '{split_dir}/<class>/'")
    return files, labels, list(classes)


def _decode(path: Path, image_size: int, mode: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            arr = np.asarray(img.convert(mode).resize((image_size, image_size), Image.BILINEAR), dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as exc:
        raise DataError(f"could not read image '{path}' ({type(exc).__name__}); remove it or replace it with a valid image") from None
    return arr[:, :, None] if arr.ndim == 2 else arr


def _cache_key(files: Sequence[Path], image_size: int, mode: str) -> str:
    h = hashlib.sha1(f"{image_size}|{mode}".encode())
    for f in files:
        st = f.stat()
        h.update(f"{f.resolve()}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def _load_split(split_dir: Path, classes: Sequence[str] | None, image_size: int, mode: str, cache_dir: str | None,
                max_per_class: int | None, seed: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    files, labels, classes = list_images(split_dir, classes)
    y = np.asarray(labels, dtype=np.int64)
    rows = np.arange(len(files))
    if max_per_class:
        rng = np.random.default_rng(seed)
        rows = np.sort(np.concatenate([rng.permutation(np.flatnonzero(y == c))[:max_per_class] for c in np.unique(y)]))
    files = [files[i] for i in rows]
    y = y[rows]
    cache = None
    if cache_dir:
        cache = Path(cache_dir).expanduser() / f"imagefolder_{split_dir.name}_{_cache_key(files, image_size, mode)}.npz"
        if cache.is_file():
            with np.load(cache) as z:
                return z["images"], z["labels"], classes
    images = np.stack([_decode(f, image_size, mode) for f in tqdm(files, desc=f"decode {split_dir.name} images", leave=False)])
    if cache is not None:
        buf = io.BytesIO()
        np.savez(buf, images=images, labels=y)
        atomic_write_bytes(cache, buf.getvalue())
    return images, y, classes


@DATASETS.register("imagefolder", track="vision")
def load_image_folder(path: str | None = None, image_size: int = 32, mode: str = "RGB", max_train_per_class: int | None = None,
                      max_test_per_class: int | None = None, mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                      cache_dir: str | None = None, augment: bool = False, split_seed: int = 0, **_: object) -> VisionData:
    """Load ``path/{train,test}/<class>/*`` as in-memory tensors.

    Args:
        path: The folder holding ``train/`` and ``test/``.
        image_size: Square size images are resized to (e.g. 224 for ImageNet-pretrained timm
            models at their native resolution; small values train fast on CPU).
        mode: PIL mode, ``"RGB"`` (3 channels) or ``"L"`` (grey, 1 channel).
        max_train_per_class, max_test_per_class: Optional per-class subsets (seeded by ``split_seed``).
        mean, std: Normalisation; default ImageNet's for RGB (what pretrained timm models
            expect), 0.5/0.5 for grey.
        cache_dir: Where decoded arrays are cached (``None``: no cache).
        augment: Random crop + flip when training the original and retrained models.
    """
    if not path:
        raise DataError("data=imagefolder needs data.path=DIR (a folder with train/<class>/* and test/<class>/*)")
    root = Path(str(path)).expanduser()
    if not root.is_dir():
        raise DataError(f"data.path='{root}' is not a directory")
    if mode not in ("RGB", "L"):
        raise DataError(f"data.mode must be RGB or L, got '{mode}'")
    x_tr, y_tr, classes = _load_split(root / "train", None, int(image_size), mode, cache_dir, max_train_per_class, split_seed)
    x_te, y_te, _ = _load_split(root / "test", classes, int(image_size), mode, cache_dir, max_test_per_class, split_seed)
    chans = 1 if mode == "L" else 3
    mean = tuple(mean) if mean else ((0.5,) if chans == 1 else IMAGENET_MEAN)
    std = tuple(std) if std else ((0.5,) if chans == 1 else IMAGENET_STD)

    def tensors(x: np.ndarray, y: np.ndarray) -> TensorImageDataset:
        return TensorImageDataset(torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(y), mean=mean, std=std)

    return VisionData(tensors(x_tr, y_tr), tensors(x_te, y_te), len(classes), classes, in_chans=chans, image_size=int(image_size),
                      source=str(root), augment_train=augment, files={"imagefolder": str(root)})
