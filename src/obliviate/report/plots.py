"""Matplotlib figures of run results, rendered to PNG bytes (Agg backend, no display needed).

Figures are built with :class:`matplotlib.figure.Figure` directly (never ``pyplot``), so no
global backend state changes and nothing leaks between calls.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import Any

from obliviate.extras import require
from obliviate.report.runs import LLM_KEYS, RunData

# log_history keys that are bookkeeping, not curves
_SKIP = {"step", "epoch", "total_flos", "train_runtime", "train_samples_per_second", "train_steps_per_second", "train_loss"}
STAGE_COLORS = {"forget": "#d62728", "retain": "#1f77b4", "test": "#2ca02c"}
VISION_BARS = (("UA", "UA"), ("RA", "RA"), ("TA", "TA"), ("MIA", "MIA"), ("avg_gap", "Avg. Gap"))


def _figure(width: float, height: float) -> Any:
    require("matplotlib")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

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


def training_curves(run: RunData) -> bytes | None:
    """Losses (left) and other logged values (right) over steps; ``None`` without a log."""
    series = curve_series(run.log_history)
    if not series:
        return None
    losses = {k: v for k, v in series.items() if "loss" in k}
    others = {k: v for k, v in series.items() if "loss" not in k}
    panels = [(t, s) for t, s in (("losses", losses), ("other logged values", others)) if s]
    fig = _figure(5.2 * len(panels), 3.4)
    for i, (title, group) in enumerate(panels, start=1):
        ax = fig.add_subplot(1, len(panels), i)
        for key, (xs, ys) in sorted(group.items()):
            ax.plot(xs, ys, marker="o" if len(xs) < 15 else None, ms=3, label=key)
        if title != "losses" and all(y > 0 for _, ys in group.values() for y in ys) and len(group) > 1:
            ax.set_yscale("log")
        ax.set_title(f"{run.name}: {title}", fontsize=9)
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    return to_png(fig)


def comparison_bars(runs: Sequence[RunData], track: str) -> bytes | None:
    """Grouped bars of headline metrics, one bar per run (vision: plus the retrained model)."""
    runs = [r for r in runs if r.track == track]
    if not runs:
        return None
    metrics = VISION_BARS if track == "vision" else tuple((k, h) for k, h in LLM_KEYS if any(_finite(r.headline.get(k)) for r in runs))
    if not metrics:
        return None
    labels = [r.name for r in runs]
    values = [[r.headline.get(k) for k, _ in metrics] for r in runs]
    if track == "vision":
        retrain = next((row for r in runs for row in r.rows if row.get("method") == "retrain"), None)
        if retrain is not None:
            labels.append("retrain" if len({r.group for r in runs}) == 1 else "retrain (first)")
            values.append([retrain.get(k) for k, _ in metrics])
    if track == "vision":
        fig = _figure(max(6.0, 1.1 * len(metrics) * (1 + 0.25 * len(labels))), 3.8)
        axes = [fig.add_subplot(1, 1, 1)] * len(metrics)
    else:
        fig = _figure(3.0 * len(metrics), 3.4)
        axes = [fig.add_subplot(1, len(metrics), i + 1) for i in range(len(metrics))]
    width = 0.8 / len(labels)
    for j, (key, header) in enumerate(metrics):
        ax = axes[j]
        for i, label in enumerate(labels):
            v = values[i][j]
            v = float(v) if _finite(v) else 0.0
            x = (j if track == "vision" else 0) + (i - (len(labels) - 1) / 2) * width
            ax.bar(x, v, width, color=f"C{i}", label=label if j == 0 else None)
        if track != "vision":
            ax.set_title(header, fontsize=9)
            ax.set_xticks([])
            ax.grid(axis="y", alpha=0.3)
    if track == "vision":
        ax = axes[0]
        ax.set_xticks(range(len(metrics)), [h for _, h in metrics])
        ax.set_ylabel("%")
        ax.grid(axis="y", alpha=0.3)
        ax.set_title("unlearned models vs the retrained model (Avg. Gap: lower is better)", fontsize=9)
        ax.legend(fontsize=7, ncols=min(4, len(labels)))
    else:
        fig.legend(*axes[0].get_legend_handles_labels(), fontsize=7, loc="outside lower center", ncols=min(4, len(labels)))
    return to_png(fig)


def score_distributions(run: RunData, bins: int = 30) -> bytes | None:
    """Histograms of true-class confidence (the MIA score) of forget / retain / test samples,
    one panel per model (original, unlearned, retrain); ``None`` without ``eval/*.json``."""
    stages = [s for s in ("original", "unlearned", "retrain") if s in run.per_sample]
    if not stages:
        return None
    fig = _figure(4.0 * len(stages), 3.2)
    edges = [i / bins for i in range(bins + 1)]
    for i, stage in enumerate(stages, start=1):
        ax = fig.add_subplot(1, len(stages), i)
        for part in ("forget", "retain", "test"):
            conf = [float(c) for c in (run.per_sample[stage].get(part) or {}).get("confidence", []) if _finite(c)]
            if conf:
                ax.hist(conf, bins=edges, density=True, histtype="step", lw=1.6, color=STAGE_COLORS[part], label=f"{part} (n={len(conf)})")
        ax.set_yscale("log")
        ax.set_title(f"{stage}", fontsize=9)
        ax.set_xlabel("true-class confidence")
        ax.legend(fontsize=7)
    return to_png(fig)
