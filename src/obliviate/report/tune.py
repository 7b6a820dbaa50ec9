"""Report pieces for ``obliviate tune`` run dirs (``tune.json``).

``obliviate report TUNE_DIR`` adds a ``tuning`` section: the objective over trials (complete
trials, pruned trials at their last intermediate value, the preset trial and the best value so
far), the intermediate values of every trial over training steps, a summary table and the
validation of the preset and the tuned configuration. The validation run dirs
(``validation/{default,tuned}``) also join the report's other sections like any run dir.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from obliviate.io import read_json

TUNE_FILE = "tune.json"


def is_tune_dir(path: str | Path) -> bool:
    """Whether ``path`` is an ``obliviate tune`` run dir."""
    return (Path(path) / TUNE_FILE).is_file()


def validation_dirs(path: str | Path) -> list[tuple[str, Path]]:
    """``[(name, run dir)]`` of the validation runs that exist (``default``, ``tuned``)."""
    out = []
    for name in ("default", "tuned"):
        run_dir = Path(path) / "validation" / name
        if (run_dir / "metrics.json").is_file():
            out.append((name, run_dir))
    return out


def _value(t: dict[str, Any]) -> float | None:
    v = t.get("value")
    if v is None and t.get("state") == "PRUNED" and t.get("intermediate"):
        v = list(t["intermediate"].values())[-1]
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None


def objective_plot(data: dict[str, Any]) -> bytes | None:
    """PNG: the objective per trial with the best-so-far line (left), intermediate values over steps (right)."""
    from obliviate.report.plots import _figure, to_png

    trials = data.get("trials") or []
    points = [(t["number"], _value(t), t) for t in trials]
    points = [(n, v, t) for n, v, t in points if v is not None]
    if not points:
        return None
    fig = _figure(10.4, 3.6)
    ax = fig.add_subplot(1, 2, 1)
    for state, marker, color in (("COMPLETE", "o", "#1f77b4"), ("PRUNED", "x", "#7f7f7f")):
        sel = [(n, v) for n, v, t in points if t["state"] == state]
        if sel:
            ax.scatter([n for n, _ in sel], [v for _, v in sel], marker=marker, color=color, s=22, label=state.lower(), zorder=3)
    default = [(n, v) for n, v, t in points if t.get("default") and t["state"] == "COMPLETE"]
    if default:
        ax.scatter([default[0][0]], [default[0][1]], marker="*", s=140, color="#ff7f0e", label="preset", zorder=4)
    best, xs, ys = math.inf, [], []
    for n, v, t in sorted(points, key=lambda p: p[0]):
        if t["state"] == "COMPLETE":
            best = min(best, v)
        if math.isfinite(best):
            xs.append(n)
            ys.append(best)
    if xs:
        ax.step(xs, ys, where="post", color="#2ca02c", label="best so far")
    positive = all(v > 0 for _, v, _ in points)
    if positive and max(v for _, v, _ in points) / max(min(v for _, v, _ in points), 1e-12) > 50:
        ax.set_yscale("log")
    ax.set_xlabel("trial")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(f"objective ({data.get('objective')}, lower is better)")
    ax.set_title(f"{data.get('method')} ({data.get('track')}): objective over trials", fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    ax2 = fig.add_subplot(1, 2, 2)
    for t in trials:
        inter = t.get("intermediate") or {}
        if inter:
            steps = [int(k) for k in inter]
            ax2.plot(steps, list(inter.values()), marker="o", ms=2, lw=1, alpha=0.7,
                     color="#7f7f7f" if t["state"] == "PRUNED" else None, ls="--" if t["state"] == "PRUNED" else "-")
    ax2.set_xlabel("optimizer step")
    ax2.set_ylabel("intermediate objective")
    ax2.set_title("intermediate values (dashed: pruned)", fontsize=9)
    ax2.grid(alpha=0.3)
    return to_png(fig)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if math.isfinite(v) else "-"
    return "-" if v is None else html.escape(str(v))


def tune_section(paths: Sequence[str | Path], img: Any) -> str | None:
    """HTML of the tuning section for the tune dirs among ``paths`` (``None`` if there are none).

    Args:
        paths: The report's directories.
        img: ``(png bytes, alt text) -> <img> HTML`` (the report's embedder).
    """
    parts = []
    for path in (Path(p) for p in paths if is_tune_dir(p)):
        data = read_json(path / TUNE_FILE)
        counts: dict[str, int] = {}
        for t in data.get("trials") or []:
            counts[t["state"].lower()] = counts.get(t["state"].lower(), 0) + 1
        preset = next((t for t in data.get("trials") or [] if t.get("default")), None)
        rows = [("method / track", f"{data.get('method')} / {data.get('track')}"), ("objective", data.get("objective")),
                ("trials", ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))),
                ("preset value", None if preset is None else preset.get("value")), ("best value", data.get("best_value")),
                *((f"objective of the {k} model", v) for k, v in (data.get("reference_objectives") or {}).items()),
                ("best parameters", data.get("best_params")), ("ready command", data.get("best_command"))]
        table = "".join(f"<tr><th>{html.escape(k)}</th><td>{_fmt(v)}</td></tr>" for k, v in rows)
        parts.append(f"<h3>{html.escape(str(path))}</h3><table><tbody>{table}</tbody></table>")
        png = objective_plot(data)
        if png is not None:
            parts.append(img(png, f"objective over trials of {path.name}"))
        val = data.get("validation") or {}
        if val.get("skipped"):
            parts.append(f'<p class="note">validation skipped: {html.escape(str(val["skipped"]))}</p>')
        else:
            keys = sorted({k for name in ("default", "tuned") for k, v in (val.get(name) or {}).items() if isinstance(v, (int, float))
                           and not isinstance(v, bool)})
            head = "".join(f"<th>{html.escape(k)}</th>" for k in keys)
            body = "".join(f"<tr><td>{name}</td>" + "".join(f"<td>{_fmt((val.get(name) or {}).get(k))}</td>" for k in keys) + "</tr>"
                           for name in ("default", "tuned") if val.get(name))
            parts.append(f'<p class="note">validation against {html.escape(str(val.get("against")))}</p>'
                         f"<table><thead><tr><th>config</th>{head}</tr></thead><tbody>{body}</tbody></table>")
    return "\n".join(parts) if parts else None
