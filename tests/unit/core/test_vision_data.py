import io
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from obliviate.data.vision.cifar10 import CLASSES, load_cifar10
from obliviate.data.vision.digits import load_digits
from obliviate.errors import DataError
from obliviate.models import build_vision_model


def _jpeg(color):
    buf = io.BytesIO()
    Image.fromarray(np.full((32, 32, 3), color, dtype=np.uint8)).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def _make_folder(root, per_class=2):
    for split in ("train", "test"):
        for c, name in enumerate(CLASSES[:3]):
            d = root / split / name
            d.mkdir(parents=True)
            for i in range(per_class):
                (d / f"{i:04d}.jpg").write_bytes(_jpeg(20 * c + i))


def test_digits_split_is_fixed_stratified_and_disjoint():
    data = load_digits()
    assert len(data.train) + len(data.test) == 1797 and len(data.test) == 360
    assert data.train[0]["pixel_values"].shape == (1, 8, 8)
    again = load_digits()
    assert torch.equal(again.train.images, data.train.images)
    # no image appears in both splits
    tr = {tuple(x.flatten().tolist()) for x in data.train.images}
    te = [tuple(x.flatten().tolist()) for x in data.test.images]
    assert sum(t in tr for t in te) <= 5  # digits has a handful of exact duplicate images across the set
    counts = np.bincount(data.test.labels.numpy())
    assert counts.min() >= 35 and counts.max() <= 37


def test_digits_training_subset_per_class_keeps_the_test_split():
    full, small = load_digits(), load_digits(max_train_per_class=10)
    assert np.bincount(small.train.labels.numpy()).tolist() == [10] * 10
    assert torch.equal(small.test.images, full.test.images)  # the test split is unchanged
    rows = {tuple(x.flatten().tolist()) for x in full.train.images}
    assert all(tuple(x.flatten().tolist()) in rows for x in small.train.images)  # a subset of the training split
    assert small.train.indices.tolist() == list(range(100))  # forget/retain indices are positions in the subset
    assert torch.equal(load_digits(max_train_per_class=10).train.images, small.train.images)  # seeded


def test_cifar_folder_and_tarball_layouts_agree(tmp_path):
    _make_folder(tmp_path / "folder")
    tar_dir = tmp_path / "tars"
    tar_dir.mkdir()
    for split in ("train", "test"):
        with tarfile.open(tar_dir / f"cifar10_{split}_jpg.tar.gz", "w:gz") as tar:
            tar.add(tmp_path / "folder" / split, arcname=split)
    a = load_cifar10(str(tmp_path / "folder"), cache_dir=str(tmp_path / "cache"))
    b = load_cifar10(str(tar_dir))
    assert len(a.train) == 6 and a.train.labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert torch.equal(a.train.images, b.train.images) and torch.equal(a.test.labels, b.test.labels)
    assert a.train.images.shape == (6, 3, 32, 32) and a.train.images.dtype == torch.uint8
    cached = load_cifar10(str(tmp_path / "folder"), cache_dir=str(tmp_path / "cache"))  # from the .npz cache
    assert torch.equal(cached.train.images, a.train.images)
    sub = load_cifar10(str(tmp_path / "folder"), max_train_per_class=1)
    assert len(sub.train) == 3


def test_cifar_errors_are_clear(tmp_path):
    with pytest.raises(DataError, match="set paths.cifar10"):
        load_cifar10(None)
    with pytest.raises(DataError, match="not found under"):
        load_cifar10(str(tmp_path))


def test_real_cifar10_test_tarball(shared_data, tmp_path):
    root = shared_data / "cifar10_jpg"
    from obliviate.data.vision.cifar10 import _read_split

    images, labels = _read_split(root, "test")
    assert images.shape == (10000, 32, 32, 3)
    assert np.bincount(labels).tolist() == [1000] * 10
    # the README's decoded per-channel means
    assert np.allclose(images.reshape(-1, 3).mean(0), (125.99, 123.69, 114.85), atol=0.05)


def test_augmentation_keeps_shape_and_eval_is_deterministic():
    data = load_digits()
    aug = data.train.with_augment(True)
    assert aug[0]["pixel_values"].shape == (1, 8, 8)
    assert torch.equal(data.train[0]["pixel_values"], data.train[0]["pixel_values"])


@pytest.mark.parametrize("name, kwargs, shape", [
    ("digits_cnn", {}, (2, 1, 8, 8)),
    ("resnet18_cifar", {"width": 8}, (2, 3, 32, 32)),
    ("timm", {"name": "resnet18"}, (2, 1, 8, 8)),
    ("timm", {"name": "vit_tiny_patch16_224", "img_size": 32, "patch_size": 8}, (2, 3, 32, 32)),
])
def test_vision_models_forward(name, kwargs, shape):
    model = build_vision_model(name, num_classes=10, in_chans=shape[1], **kwargs)
    assert model(torch.zeros(shape)).shape == (2, 10)
