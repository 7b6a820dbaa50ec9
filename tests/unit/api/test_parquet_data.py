"""ImageNetDataManager on tiny parquet files."""

import numpy as np
import pytest
import torch

from obliviate.errors import DataError
from obliviate.vision import ImageNetDataManager


def test_loaders_split_by_class_without_overlap(data_manager):
    val, forget, retain = data_manager.get_loaders(forget_class=1, batch_size=16)
    fx, fy = next(iter(forget))
    assert fx.shape[1:] == (3, 8, 8) and fx.dtype == torch.float32 and 0 <= fx.min() and fx.max() <= 1
    f_labels = torch.cat([y for _, y in forget])
    r_labels = torch.cat([y for _, y in retain])
    v_labels = torch.cat([y for _, y in val])
    assert (f_labels == 1).all() and len(f_labels) == 24
    assert (r_labels != 1).all() and len(r_labels) == 48
    assert sorted(v_labels.unique().tolist()) == [0, 1, 2] and len(v_labels) == 24
    f_idx, r_idx = data_manager.split_indices(1)
    assert not set(f_idx.tolist()) & set(r_idx.tolist())
    assert len(f_idx) + len(r_idx) == len(data_manager.train_labels)


def test_transforms_and_multiple_classes(data_manager):
    def tf(img):
        return torch.from_numpy(np.asarray(img.resize((4, 4)), dtype=np.float32)).permute(2, 0, 1)

    _, forget, _ = data_manager.get_loaders(forget_class=[0, 2], transforms=tf, batch_size=100)
    x, y = next(iter(forget))
    assert x.shape == (48, 3, 4, 4) and set(y.tolist()) == {0, 2}


def test_absent_class_and_empty_glob_are_clear_errors(data_manager, tmp_path):
    with pytest.raises(DataError, match="does not occur.*present labels: \\[0, 1, 2\\]"):
        data_manager.get_loaders(forget_class=7)
    with pytest.raises(DataError, match="no parquet files match"):
        ImageNetDataManager(str(tmp_path / "nothing" / "*.parquet"), str(tmp_path / "*.parquet"))


def test_wrong_schema_is_a_clear_error(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"img": [b"x"], "label": [0]}), tmp_path / "bad.parquet")
    with pytest.raises(DataError, match="lack column"):
        ImageNetDataManager(str(tmp_path / "bad.parquet"), str(tmp_path / "bad.parquet"), cache_dir=str(tmp_path / "c"))
