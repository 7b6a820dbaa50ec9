"""Matplotlib figures of run results, rendered to PNG bytes (Agg backend, no display needed).

Figures are built with :class:`matplotlib.figure.Figure` directly (never ``pyplot``), so no
global backend state changes and nothing leaks between calls. Every figure is at most three
times as wide as it is tall (:data:`MAX_ASPECT`), so it stays readable in a report column;
bar charts grow in height with the number of runs, never in width.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import Any

from obliviate.extras import require
from obliviate.report.runs import RunData

# log_history keys that are bookkeeping, not curves
_SKIP = {"step", "epoch", "total_flos", "train_runtime", "train_samples_per_second", "train_steps_per_second", "train_loss"}
STAGE_COLORS = {"forget": "#d62728", "retain": "#1f77b4", "test": "#2ca02c"}
ROLE_COLORS = {"run": "#4c72b0", "original": "#8c8c8c", "retrain": "#2ca02c"}
MAX_ASPECT = 3.0
#: Curves are drawn when a run logged at least this many points of one series; fewer are a table.
MIN_CURVE_POINTS = 5


def _figure(width: float, height: float) -> Any:
    require("matplotlib")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    height = max(height, width / (MAX_ASPECT - 0.1))  # pixel rounding must not push it past 3:1
    fig = Figure(figsize=(width, height), dpi=96, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def to_png(fig: Any) -> bytes:
    """Render a figure to PNG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def curve_series(log_history: Sequence[dict[str, Any]]) -> dict[str, tuple[list[float], list[float]]]:
    """``{key: (steps, values)}`` of every numeric per-step entry of a Trainer ``log_history``
    (the final ``train_runtime`` summary entry is left out)."""
    out: dict[str, tuple[list[float], list[float]]] = {}
    for i, entry in enumerate(log_history):
        if "train_runtime" in entry:  # the end-of-training summary holds run means, not a step's values
            continue
        step = entry.get("step", i)
        for key, value in entry.items():
            if key in _SKIP or not _finite(value) or "runtime" in key or "per_second" in key:
                continue
            xs, ys = out.setdefault(key, ([], []))
            xs.append(float(step))
            ys.append(float(value))
    return out


def has_curves(run: RunData) -> bool:
    """True when some logged series of the run has at least :data:`MIN_CURVE_POINTS` points."""
    return any(len(xs) >= MIN_CURVE_POINTS for xs, _ in curve_series(run.log_history).values())


def training_curves(run: RunData) -> bytes | None:
    """Losses (left) and other logged values (right) over steps; ``None`` when the run logged
    fewer than :data:`MIN_CURVE_POINTS` points (the report shows its logged values as a table)."""
    if not has_curves(run):
        return None
    series = {k: v for k, v in curve_series(run.log_history).items() if len(v[0]) >= 2}
    losses = {k: v for k, v in series.items() if "loss" in k}
    others = {k: v for k, v in series.items() if "loss" not in k}
    panels = [(t, s) for t, s in (("losses", losses), ("other logged values", others)) if s]
    fig = _figure(4.2 * len(panels), 3.0)
    for i, (title, group) in enumerate(panels, start=1):
        ax = fig.add_subplot(1, len(panels), i)
        for key, (xs, ys) in sorted(group.items()):
            ax.plot(xs, ys, marker="o" if len(xs) < 15 else None, ms=3, label=key)
        if title != "losses" and all(y > 0 for _, ys in group.values() for y in ys) and len(group) > 1:
            ax.set_yscale("log")
        ax.set_title(f"{run.name}: {title}", fontsize=8)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6)
        ax.grid(alpha=0.3)
    return to_png(fig)


def metric_bars(entries: Sequence[tuple[str, float, str]], title: str, *, lower_is_better: bool = False, unit: str = "") -> bytes:
    """One metric over many runs: horizontal bars, sorted (best first), reference models marked.

    Args:
        entries: ``(label, value, role)``; role ``"run"``, ``"original"`` or ``"retrain"``
            (the reference models get their own colour, a "(original)" / "(retrain)" label,
            and the retrained model's value is drawn as a dashed line across all bars).
        title: The metric's name.
        lower_is_better: Sort ascending (e.g. Avg. Gap) instead of descending.
        unit: Axis label suffix (``%``).
    """
    rows = [(label, float(v), role) for label, v, role in entries if _finite(v)]
    rows.sort(key=lambda r: r[1], reverse=not lower_is_better)
    n = max(len(rows), 1)
    fig = _figure(4.4, 0.75 + 0.2 * n)
    ax = fig.add_subplot(1, 1, 1)
    labels = [f"{label} ({role})" if role != "run" and role not in label else label for label, _, role in rows]
    ys = list(range(len(rows)))
    bars = ax.barh(ys, [v for _, v, _ in rows], color=[ROLE_COLORS.get(role, ROLE_COLORS["run"]) for _, _, role in rows], height=0.7)
    ax.set_yticks(ys, labels, fontsize=7 if n <= 20 else 6)
    ax.invert_yaxis()  # first (best) at the top
    ax.bar_label(bars, fmt="%.3g", fontsize=6, padding=2)
    retrain = next((v for _, v, role in rows if role == "retrain"), None)
    if retrain is not None:
        ax.axvline(retrain, color=ROLE_COLORS["retrain"], ls="--", lw=1)
    hi = max([v for _, v, _ in rows] + [0.0])
    lo = min([v for _, v, _ in rows] + [0.0])
    ax.set_xlim(lo - 0.02 * (hi - lo or 1), hi + 0.18 * (hi - lo or 1))  # room for the value labels
    ax.set_title(f"{title}{' (lower is better)' if lower_is_better else ''}", fontsize=8)
    ax.tick_params(axis="x", labelsize=7)
    if unit:
        ax.set_xlabel(unit, fontsize=7)
    ax.grid(axis="x", alpha=0.3)
    return to_png(fig)


def score_distributions(run: RunData, bins: int = 30) -> bytes | None:
    """Histograms of true-class confidence (the MIA score) of forget / retain / test samples,
    one panel per model (original, unlearned, retrain); ``None`` without ``eval/*.json``."""
    stages = [s for s in ("original", "unlearned", "retrain") if s in run.per_sample]
    if not stages:
        return None
    import numpy as np

    fig = _figure(3.0 * len(stages), 3.0)
    for i, stage in enumerate(stages, start=1):
        ax = fig.add_subplot(1, len(stages), i)
        for part in ("forget", "retain", "test"):
            conf = [float(c) for c in (run.per_sample[stage].get(part) or {}).get("confidence", []) if _finite(c)]
            if conf:  # np.histogram + stairs: the same step histogram as ax.hist, drawn faster
                density, edges = np.histogram(conf, bins=bins, range=(0.0, 1.0), density=True)
                ax.stairs(density, edges, lw=1.6, color=STAGE_COLORS[part], label=f"{part} (n={len(conf)})")
        ax.set_yscale("log")
        ax.set_title(f"{stage}", fontsize=8)
        ax.set_xlabel("true-class confidence", fontsize=7)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6)
    return to_png(fig)
