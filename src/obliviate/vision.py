"""Seed-004 vision unlearning API.

Example:
    >>> from obliviate.vision import ImageNetDataManager, ImageNetEvaluator, Unlearner, UnlearnerConfig
    >>> dm = ImageNetDataManager("train/*.parquet", "val/*.parquet")  # doctest: +SKIP
    >>> val_loader, f_loader, r_loader = dm.get_loaders(forget_class=9, transforms=transforms)  # doctest: +SKIP
    >>> ev = ImageNetEvaluator(model, val_loader, device="cpu", forget_class=9); ev.run()  # doctest: +SKIP
    >>> trained = Unlearner(model=model, forget_loader=f_loader, retain_loader=r_loader,
    ...                     config=UnlearnerConfig(epochs=8, lr=3e-4, rank=8, alpha=16)).train()  # doctest: +SKIP
    >>> trained.save_pretrained("./checkpoints/unlearned")  # doctest: +SKIP

See ``docs/vision.md``.
"""

from obliviate.api import ImageNetDataManager, ImageNetEvaluator, RunLogger, Unlearner, UnlearnerConfig

__all__ = ["ImageNetDataManager", "ImageNetEvaluator", "RunLogger", "Unlearner", "UnlearnerConfig"]
