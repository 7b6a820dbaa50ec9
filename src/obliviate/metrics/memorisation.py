"""Memorisation metrics over teacher-forced argmax flags (DESIGN §6).

Both take ``correct`` ``[n]``: for each answer token, whether the teacher-forced argmax of
the model's next-token distribution equals the label (the runner computes it in the same
forward pass as the log-probs).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from obliviate.registry import METRICS


def _flags(correct: Sequence[bool] | np.ndarray) -> np.ndarray:
    return np.asarray(correct, dtype=bool).reshape(-1)


@METRICS.register(
    "exact_memorization", aliases=("exact_memorisation",), track="llm", higher_is_better=False, needs=("argmax_correct",)
)
def exact_memorisation(correct: Sequence[bool] | np.ndarray) -> float:
    """Fraction of answer tokens whose teacher-forced argmax equals the label.

    Lower is better on the forget set (the model no longer reproduces it). NaN for an
    empty answer (the reference framework reports ``None``).
    """
    flags = _flags(correct)
    return float(flags.mean()) if flags.size else float("nan")


@METRICS.register("extraction_strength", track="llm", higher_is_better=False, needs=("argmax_correct",))
def extraction_strength(correct: Sequence[bool] | np.ndarray) -> float:
    """Extraction strength ``1 − k/|y|``.

    ``k`` is the shortest prefix length (0..|y|) after which the teacher-forced argmax
    reproduces the whole rest of the answer, i.e. ``1 − k/|y|`` is the length of the longest
    all-correct *suffix* over ``|y|``. Full reproduction gives 1; nothing reproduced (the last
    token already wrong, ``k = |y|``) gives 0 — not ``1/|y|`` as a loop over ``k < |y|``
    would. An empty answer gives 0 (as in the reference framework).
    """
    flags = _flags(correct)
    n = flags.size
    if n == 0:
        return 0.0
    wrong = np.flatnonzero(~flags)
    k = 0 if wrong.size == 0 else int(wrong[-1]) + 1  # suffix after the last wrong token is all-correct
    return 1.0 - k / n
