"""Tiny parquet image sets (HF layout: image {bytes, path} + int label) and a tiny classifier."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from torch import nn

N_CLASSES = 3


def make_images(n_per_class: int, seed: int) -> list[dict]:
    """8x8 RGB PNGs; class c has a bright channel c (easy to learn, easy to forget)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    rows = []
    for c in range(N_CLASSES):
        for _ in range(n_per_class):
            arr = rng.integers(0, 60, (8, 8, 3), dtype=np.uint8)
            arr[:, :, c] += 150
            buf = io.BytesIO()
            Image.fromarray(arr).save(buf, format="PNG")
            rows.append({"image": {"bytes": buf.getvalue(), "path": None}, "label": c})
    rng.shuffle(rows)
    return rows


def write_parquet(path, rows, n_files: int = 1) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.mkdir(parents=True, exist_ok=True)
    for i, part in enumerate(np.array_split(np.arange(len(rows)), n_files)):
        pq.write_table(pa.Table.from_pylist([rows[j] for j in part]), path / f"part-{i:03d}.parquet")


@pytest.fixture(scope="session")
def parquet_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("parquet")
    write_parquet(root / "train", make_images(24, 0), n_files=2)
    write_parquet(root / "val", make_images(8, 1))
    return root


@pytest.fixture(scope="session")
def data_manager(parquet_dirs):
    from obliviate.vision import ImageNetDataManager

    return ImageNetDataManager(str(parquet_dirs / "train" / "*.parquet"), str(parquet_dirs / "val" / "*.parquet"),
                               cache_dir=str(parquet_dirs / "hf_cache"))


class TinyNet(nn.Module):
    """conv -> relu -> global pool -> fc (plain PyTorch, ~250 parameters)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.proj = nn.Linear(8, 8)
        self.fc = nn.Linear(8, N_CLASSES)

    def forward(self, x):
        h = torch.relu(self.conv(x)).mean((2, 3))
        return self.fc(torch.relu(self.proj(h)))


@pytest.fixture(scope="session")
def trained_net(data_manager):
    """TinyNet trained to (near) perfect accuracy on the tiny train set."""
    old_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = TinyNet()
    val, f, r = data_manager.get_loaders(forget_class=0, batch_size=256)
    xs, ys = zip(*[b for loader in (f, r) for b in loader])
    x, y = torch.cat(xs), torch.cat(ys)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(150):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()
    torch.set_num_threads(old_threads)
    return model


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every API test runs with one torch thread (tests/conftest.py)."""
