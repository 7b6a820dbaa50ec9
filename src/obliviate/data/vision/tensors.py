"""In-memory image datasets: uint8/float image tensors + integer labels."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import Dataset


class TensorImageDataset(Dataset):
    """Images ``[N, C, H, W]`` (uint8 or float) with labels; items carry their index.

    Args:
        images: Image tensor (uint8 images are scaled to [0, 1]).
        labels: Integer labels ``[N]``.
        mean, std: Per-channel normalisation applied on access.
        indices: Original indices (into the full split) of the rows; default ``arange(N)``.
        augment: Random crop (4-pixel padding) + horizontal flip, for training natural images.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        *,
        mean: tuple[float, ...] = (0.0,),
        std: tuple[float, ...] = (1.0,),
        indices: np.ndarray | None = None,
        augment: bool = False,
        seed: int = 0,
    ) -> None:
        self.images, self.labels = images, labels.long()
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
        self.indices = np.arange(len(labels)) if indices is None else np.asarray(indices)
        self.augment = augment
        self._gen = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return len(self.labels)

    def _image(self, i: int) -> torch.Tensor:
        x = self.images[i]
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
        if self.augment:
            h, w = x.shape[-2:]
            padded = torch.nn.functional.pad(x, (4, 4, 4, 4), mode="reflect")
            dy, dx = torch.randint(0, 9, (2,), generator=self._gen).tolist()
            x = padded[:, dy : dy + h, dx : dx + w]
            if torch.rand((), generator=self._gen) < 0.5:
                x = x.flip(-1)
        return (x - self.mean) / self.std

    def __getitem__(self, i: int) -> dict:
        return {"pixel_values": self._image(i), "labels": self.labels[i], "index": int(self.indices[i])}

    def subset(self, rows: np.ndarray, *, augment: bool | None = None) -> "TensorImageDataset":
        """A new dataset over ``rows`` (positions in this dataset); never mutates this one."""
        rows = np.asarray(rows, dtype=np.int64)
        t = torch.from_numpy(rows)
        return TensorImageDataset(
            self.images[t], self.labels[t], mean=tuple(self.mean.flatten().tolist()),
            std=tuple(self.std.flatten().tolist()), indices=self.indices[rows],
            augment=self.augment if augment is None else augment,
        )

    def with_augment(self, augment: bool) -> "TensorImageDataset":
        """Same data, augmentation switched on/off (shares the image tensor)."""
        return self.subset(np.arange(len(self)), augment=augment)


def per_class_rows(labels: np.ndarray, k: int | None, seed: int) -> np.ndarray:
    """Sorted positions of at most ``k`` seeded-random samples per class (all when ``k`` is falsy)."""
    labels = np.asarray(labels)
    if not k:
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    keep = [np.sort(rng.permutation(np.flatnonzero(labels == c))[:k]) for c in np.unique(labels)]
    return np.sort(np.concatenate(keep))


@dataclass
class VisionData:
    """A train/test pair of image datasets plus class metadata."""

    train: TensorImageDataset
    test: TensorImageDataset
    num_classes: int
    class_names: list[str] = field(default_factory=list)
    in_chans: int = 1
    image_size: int = 8
    source: str = ""
    augment_train: bool = False
    files: dict[str, str] = field(default_factory=dict)  # data files, hashed into the run manifest
