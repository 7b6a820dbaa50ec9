"""Pruning as a model transform: magnitude (OMP/IMP) and friends, registered in :data:`PRUNERS`.

A pruner is a function ``pruner(model, *, rate, ...) -> PruneResult`` that prunes ``model``
in place and leaves its masks attached (enforced during any later training, see
:mod:`obliviate.pruning.masks`). Every module in this package is imported on start-up, so
adding a pruner is adding a file. Reported sparsity is always *measured*
(:func:`measure_sparsity`), never copied from a config.
"""

import importlib
import pkgutil

from obliviate.registry import PRUNERS

from obliviate.pruning.masks import (  # noqa: E402
    attach_masks,
    attached_masks,
    detach_masks,
    enforce_masks,
    load_masks,
    measure_sparsity,
    param_counts,
    prunable_weights,
    save_masks,
)

for _mod in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    if not _mod.startswith("_") and _mod != "masks":
        importlib.import_module(f"{__name__}.{_mod}")
from obliviate.pruning.unlearning import compute_dual_sensitivity, unlearning_prune  # noqa: E402,F401

__all__ = [
    "PRUNERS",
    "attach_masks",
    "attached_masks",
    "detach_masks",
    "enforce_masks",
    "load_masks",
    "measure_sparsity",
    "prunable_weights",
    "save_masks",
]
