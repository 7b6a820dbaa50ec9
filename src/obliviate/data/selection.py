"""Forget-set selection and the forget/retain overlap check.

Images are identified by their index in the training split; text samples by a content hash
(see :func:`content_key`). Selections never mutate a dataset: they return index lists.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Hashable, Sequence
from typing import Any
from pathlib import Path

import numpy as np

from obliviate.errors import DataError


def class_indices(forget_class: Any, class_names: Sequence[str] | None = None) -> list[int]:
    """``forget_class`` (an int, a class name, or a list of them) as label indices.

    Raises:
        DataError: a name that is not one of ``class_names`` (or any name without them).
    """
    classes = [forget_class] if np.isscalar(forget_class) else list(forget_class)
    out = []
    for c in classes:
        if isinstance(c, (int, np.integer)) or (isinstance(c, str) and c.lstrip("-").isdigit() and (not class_names or c not in class_names)):
            out.append(int(c))
        elif class_names and str(c) in class_names:
            out.append(list(class_names).index(str(c)))
        else:
            known = f"; class names: {', '.join(class_names)}" if class_names else ""
            raise DataError(f"forget_class={c} is neither a class index nor a class name{known}")
    return out


def select_forget(
    labels: Sequence[int] | np.ndarray,
    *,
    forget_class: int | Sequence[int] | None = None,
    forget_count: int | None = None,
    forget_fraction: float | None = None,
    forget_index_file: str | Path | None = None,
    seed: int = 0,
    class_names: Sequence[str] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Split the indices ``0..len(labels)-1`` into (forget, retain).

    Exactly one selection rule must be given:
    class-wise (``forget_class``: every sample of that class or classes), random
    (``forget_count`` samples or a ``forget_fraction`` of them, drawn with ``seed``), or an
    explicit ``forget_index_file`` (JSON list, or one integer per line).

    Returns:
        Sorted int64 arrays ``(forget_idx, retain_idx)``, disjoint and covering all indices.

    Raises:
        DataError: no rule / several rules, unknown class, empty forget set, out-of-range
            or duplicate indices, a missing index file.
    """
    labels = np.asarray(labels)
    n = len(labels)
    rules = {
        "forget_class": forget_class,
        "forget_count": forget_count,
        "forget_fraction": forget_fraction,
        "forget_index_file": forget_index_file,
    }
    given = [k for k, v in rules.items() if v is not None]
    if len(given) != 1:
        raise DataError(
            "choose exactly one forget selection: forget_class=C, forget_count=N, "
            f"forget_fraction=F or forget_index_file=PATH (got {', '.join(given) or 'none'})"
        )
    if forget_class is not None:
        classes = class_indices(forget_class, class_names)
        present = set(np.unique(labels).tolist())
        for c in classes:
            if int(c) not in present:
                names = f" ({', '.join(class_names)})" if class_names else ""
                raise DataError(
                    f"forget_class={c} does not occur in the training data; "
                    f"present classes: {sorted(present)}{names}"
                )
        forget = np.flatnonzero(np.isin(labels, [int(c) for c in classes]))
    elif forget_count is not None or forget_fraction is not None:
        if forget_fraction is not None:
            if not 0.0 < float(forget_fraction) < 1.0:
                raise DataError(f"forget_fraction={forget_fraction} must be in (0, 1)")
            count = int(round(float(forget_fraction) * n))
        else:
            count = int(forget_count)  # type: ignore[arg-type]
        if not 0 < count < n:
            raise DataError(
                f"the forget set would hold {count} of {n} samples; it must be between 1 and {n - 1}"
            )
        rng = np.random.default_rng(seed)
        forget = np.sort(rng.choice(n, size=count, replace=False))
    else:
        forget = read_index_file(forget_index_file, n)  # type: ignore[arg-type]
    if len(forget) == 0:
        raise DataError("the forget set is empty; check the forget selection")
    mask = np.ones(n, dtype=bool)
    mask[forget] = False
    return forget.astype(np.int64), np.flatnonzero(mask).astype(np.int64)


def read_index_file(path: str | Path, n: int) -> np.ndarray:
    """Read forget indices from a JSON list or a one-integer-per-line text file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"forget_index_file '{path}' does not exist; give the path of a JSON list or a text file of indices")
    text = path.read_text(encoding="utf-8").strip()
    try:
        values = json.loads(text) if text.startswith("[") else [int(t) for t in text.split()]
        idx = np.asarray([int(v) for v in values], dtype=np.int64)
    except (ValueError, TypeError) as exc:
        raise DataError(f"forget_index_file '{path}' must hold integers (JSON list or one per line): {exc}") from None
    bad = idx[(idx < 0) | (idx >= n)]
    if len(bad):
        raise DataError(
            f"forget_index_file '{path}' has index {int(bad[0])} out of range; the training split has {n} samples (0..{n - 1})"
        )
    uniq, counts = np.unique(idx, return_counts=True)
    if (counts > 1).any():
        raise DataError(f"forget_index_file '{path}' lists index {int(uniq[counts > 1][0])} more than once")
    if len(idx) == 0:
        raise DataError(f"forget_index_file '{path}' is empty; the forget set must not be empty")
    return np.sort(idx)


def content_key(sample: dict) -> str:
    """Stable content hash of a text sample (question + answer), used to detect overlap."""
    text = json.dumps({k: sample.get(k) for k in ("question", "answer")}, sort_keys=True)
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


def check_no_overlap(
    forget_keys: Sequence[Hashable], retain_keys: Sequence[Hashable], *, what: str = "sample", show: int = 3
) -> None:
    """Raise :class:`DataError` naming the first overlapping items of forget and retain."""
    retain_set = set(retain_keys)
    overlap = [k for k in forget_keys if k in retain_set]
    if overlap:
        first = ", ".join(str(k) for k in overlap[:show])
        raise DataError(
            f"forget and retain sets overlap in {len(overlap)} {what}(s), first: {first}; "
            "a sample cannot be both forgotten and retained — remove it from one of the sets"
        )
