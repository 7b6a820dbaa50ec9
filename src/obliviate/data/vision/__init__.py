"""Vision datasets: digits (embedded default), CIFAR-10 (folders or tarballs), your own image
folders ({train,test}/<class>/*), parquet (HF image layout)."""

from obliviate.data.vision import cifar10, digits, imagefolder, parquet  # noqa: F401  (registration)
from obliviate.data.vision.tensors import TensorImageDataset, VisionData

__all__ = ["TensorImageDataset", "VisionData"]
