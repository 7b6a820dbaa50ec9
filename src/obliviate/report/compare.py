"""``obliviate compare RUN_DIR ...``: one table of headline metrics over finished runs.

Vision runs give UA, RA, TA, MIA, Avg. Gap and RTE of the unlearned model; LLM runs give
forget quality, model utility, forget truth ratio, ROUGE and privleak (each when present).
A mix of tracks gives one table per track.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from obliviate.report.runs import LLM_KEYS, RunData, load_runs
from obliviate.report.table import format_table

VISION_COLUMNS = [("run", "run"), ("method", "method"), ("UA", "UA"), ("RA", "RA"), ("TA", "TA"), ("MIA", "MIA"),
                  ("avg_gap", "Avg. Gap"), ("rte_s", "RTE (s)")]
LLM_COLUMNS = [("run", "run"), ("method", "method"), *LLM_KEYS]


def columns_for(track: str, rows: Sequence[dict[str, Any]]) -> list[tuple[str, str]]:
    """The columns of a track's table (LLM metrics that no run has are left out)."""
    if track == "vision":
        return VISION_COLUMNS
    present = [c for c in LLM_COLUMNS[2:] if any(r.get(c[0]) is not None for r in rows)]
    return [*LLM_COLUMNS[:2], *(present or LLM_COLUMNS[2:])]


def compare_rows(runs: Sequence[RunData]) -> dict[str, list[dict[str, Any]]]:
    """Headline rows grouped by track (``{"vision": [...], "llm": [...]}``, in input order)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        out.setdefault(run.track, []).append({**run.headline, "run": run.name})
    return out


def to_csv(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str]]) -> str:
    """CSV text (header row = column titles; empty cell for a missing value)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([h for _, h in columns])
    for r in rows:
        writer.writerow(["" if r.get(k) is None else r.get(k) for k, _ in columns])
    return buf.getvalue()


def compare(paths: Sequence[str | Path], fmt: str = "markdown", digits: int = 2) -> str:
    """The comparison table text of run dirs / quickstart dirs.

    Args:
        paths: Run directories (``metrics.json``) or quickstart directories (``summary.json``).
        fmt: ``"markdown"`` or ``"csv"``.
        digits: Decimals in markdown cells (CSV keeps full precision).
    """
    groups = compare_rows(load_runs(list(paths)))
    parts = []
    for track, rows in groups.items():
        cols = columns_for(track, rows)
        if fmt == "csv":
            parts.append(to_csv(rows, cols))
        else:
            title = f"## {track}\n\n" if len(groups) > 1 else ""
            parts.append(title + format_table(rows, cols, digits=digits if track == "vision" else max(digits, 4)))
    return "\n".join(parts) if fmt == "csv" else "\n\n".join(parts) + "\n"
