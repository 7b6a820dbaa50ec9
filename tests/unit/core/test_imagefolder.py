"""data=imagefolder: {train,test}/<class>/* folders of any image format, forget classes by name."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from obliviate.data.selection import class_indices, select_forget
from obliviate.data.vision.imagefolder import load_image_folder
from obliviate.errors import DataError

COLOURS = {"cat": (200, 60, 60), "dog": (60, 200, 60), "fox": (60, 60, 200)}


def make_image_folder(root: Path, n_train: int = 6, n_test: int = 3, size: tuple[int, int] = (20, 24), seed: int = 0) -> Path:
    """A tiny image folder: one colour per class, .jpg and .png mixed, odd sizes (resized on load)."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("test", n_test)):
        for cls, colour in COLOURS.items():
            folder = root / split / cls
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                arr = np.clip(np.array(colour)[None, None] + rng.normal(0, 30, (*size, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(arr).save(folder / f"{i:03d}.{'png' if i % 2 else 'jpg'}")
    return root


def test_classes_labels_and_shapes(tmp_path):
    root = make_image_folder(tmp_path / "imgs")
    (root / "train" / "cat" / "notes.txt").write_text("not an image")  # ignored
    data = load_image_folder(str(root), image_size=16, cache_dir=str(tmp_path / "cache"))
    assert data.class_names == ["cat", "dog", "fox"] and data.num_classes == 3 and data.in_chans == 3
    assert len(data.train) == 18 and len(data.test) == 9
    assert data.train.images.shape == (18, 3, 16, 16) and data.train.images.dtype == torch_uint8()
    assert data.train.labels.tolist() == [0] * 6 + [1] * 6 + [2] * 6
    red = data.train.images[:6, 0].float().mean()  # the cat images are red
    assert red > data.train.images[:6, 2].float().mean() + 50
    again = load_image_folder(str(root), image_size=16, cache_dir=str(tmp_path / "cache"))  # from the .npz cache
    assert (again.train.images == data.train.images).all() and list((tmp_path / "cache").glob("imagefolder_*.npz"))
    grey = load_image_folder(str(root), image_size=8, mode="L", max_train_per_class=2)
    assert grey.in_chans == 1 and grey.train.images.shape == (6, 1, 8, 8)


def torch_uint8():
    import torch

    return torch.uint8


def test_forget_class_by_name(tmp_path):
    data = load_image_folder(str(make_image_folder(tmp_path / "imgs")), image_size=8)
    assert class_indices("dog", data.class_names) == [1] and class_indices(["cat", 2], data.class_names) == [0, 2]
    forget, retain = select_forget(data.train.labels.numpy(), forget_class="fox", class_names=data.class_names)
    assert forget.tolist() == list(range(12, 18)) and len(retain) == 12
    with pytest.raises(DataError, match="neither a class index nor a class name; class names: cat, dog, fox"):
        class_indices("cow", data.class_names)


def test_bad_folders_are_one_line_errors(tmp_path):
    with pytest.raises(DataError, match="needs data.path"):
        load_image_folder(None)
    root = make_image_folder(tmp_path / "imgs")
    (root / "test" / "cow").mkdir()
    with pytest.raises(DataError, match=r"class folder\(s\) \['cow'\] that train/ does not have"):
        load_image_folder(str(root))
    (root / "test" / "cow").rmdir()
    (root / "train" / "cat" / "999.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match="could not read image .*999.jpg"):
        load_image_folder(str(root))
    with pytest.raises(DataError, match="does not exist"):
        load_image_folder(str(tmp_path / "imgs" / "train"))
