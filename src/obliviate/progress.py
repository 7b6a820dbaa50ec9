"""Progress bars for every loop that can run longer than a few seconds.

One helper so that every long loop (the before/after NLL probes, the reference-cache pass,
each evaluation pass, generation for ROUGE, LoRA warm-up) looks the same: a ``tqdm`` bar on
stderr with the count done, the total, the rate and the time left. Bars are shown whether or
not stderr is a terminal (a job whose output goes to a log file still shows where it is);
when it is not a terminal they refresh at most every 10 s so that logs stay short.

Switch them off with ``OBLIVIATE_PROGRESS=0`` (tqdm's own ``TQDM_DISABLE=1`` works too).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import Any, TypeVar

T = TypeVar("T")


def enabled() -> bool:
    """Whether bars are shown (``OBLIVIATE_PROGRESS=0`` / ``false`` / ``no`` hides them)."""
    return os.environ.get("OBLIVIATE_PROGRESS", "1").strip().lower() not in ("0", "false", "no", "off")


def progress(iterable: Iterable[T] | None = None, *, total: int | None = None, desc: str = "", unit: str = "it",
             **kwargs: Any) -> Any:
    """A ``tqdm`` bar (stderr, counts and time left) over ``iterable``, or a manual one.

    Args:
        iterable: What to iterate (``None``: a manual bar, call ``update(n)``; use it as a
            context manager so it closes).
        total: Number of items (default ``len(iterable)`` when it has one).
        desc: Label shown before the bar.
        unit: Name of one item (``"seq"``, ``"batch"``, ``"prompt"``, ...).
        **kwargs: Passed to ``tqdm`` (e.g. ``postfix``).
    """
    from tqdm.auto import tqdm

    tty = bool(getattr(sys.stderr, "isatty", lambda: False)())
    opts: dict[str, Any] = {"desc": desc, "unit": unit, "total": total, "file": sys.stderr, "dynamic_ncols": True,
                            "mininterval": 0.5 if tty else 10.0, "leave": True, "disable": not enabled()}
    opts.update(kwargs)
    return tqdm(iterable, **opts)
