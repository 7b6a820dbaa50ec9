"""Data: forget/retain pairing and selection (track-independent), vision/ and text/ loaders."""

from obliviate.data.pairing import ForgetRetainDataset, PairCollator, stack_collate
from obliviate.data.selection import check_no_overlap, content_key, select_forget
from obliviate.registry import DATASETS

__all__ = [
    "DATASETS",
    "ForgetRetainDataset",
    "PairCollator",
    "check_no_overlap",
    "content_key",
    "select_forget",
    "stack_collate",
]
