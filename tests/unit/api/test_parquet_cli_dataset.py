"""The registered `parquet` dataset (data=parquet) decodes HF-layout files into VisionData."""

import pytest

import obliviate.data.vision  # noqa: F401  (registers the vision datasets)
from obliviate.data import DATASETS
from obliviate.errors import DataError


def test_parquet_dataset_for_the_cli(parquet_dirs):
    data = DATASETS.get("parquet")(train=str(parquet_dirs / "train"), test=str(parquet_dirs / "val" / "*.parquet"), image_size=6,
                                   max_train_per_class=5, cache_dir=str(parquet_dirs / "hf_cache"))
    assert data.num_classes == 3 and data.in_chans == 3 and len(data.train) == 15 and len(data.test) == 24
    item = data.train[0]
    assert item["pixel_values"].shape == (3, 6, 6) and 0 <= int(item["labels"]) < 3
    with pytest.raises(DataError, match="data.train"):
        DATASETS.get("parquet")(train=None, test=None)
