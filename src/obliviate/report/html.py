"""``obliviate report RUN_DIR ... [-o FILE]``: one self-contained HTML report.

The page has five sections (element ids in brackets): overview (``overview``), training
curves (``training-curves``), method comparison (``method-comparison``), MIA / confidence
score distributions (``score-distributions``) and metric tables (``metric-tables``). Every
image is a PNG embedded as a ``data:`` URI and the CSS is inline, so the file can be mailed
or archived on its own. It is written atomically.
"""

from __future__ import annotations

import base64
import html
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from obliviate.io import atomic_write_text
from obliviate.report import plots
from obliviate.report.compare import columns_for, compare_rows
from obliviate.report.runs import VISION_KEYS, RunData, load_runs
from obliviate.report.tune import tune_section

SECTIONS = (
    ("overview", "Overview"),
    ("training-curves", "Training curves"),
    ("method-comparison", "Method comparison"),
    ("score-distributions", "MIA / confidence score distributions"),
    ("metric-tables", "Metric tables"),
)
ROW_COLUMNS = [("method", "model"), ("UA", "UA"), ("RA", "RA"), ("TA", "TA"), ("MIA", "MIA"), ("avg_gap", "Avg. Gap"), ("rte_s", "RTE (s)")]

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1200px;color:#222;padding:0 1em}
h1{font-size:1.6em}h2{border-bottom:2px solid #ddd;padding-bottom:.2em;margin-top:2em}h3{font-size:1.05em;margin:1.2em 0 .4em}
table{border-collapse:collapse;margin:.5em 0 1em;font-size:.9em}th,td{border:1px solid #ccc;padding:.25em .6em;text-align:right}
th{background:#f3f3f3}td:first-child,td:nth-child(2),th:first-child{text-align:left}
img{max-width:100%;height:auto;border:1px solid #eee;margin:.3em 0}.note{color:#666;font-size:.9em}
nav a{margin-right:1em}
"""


def _img(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _cell(value: Any, digits: int) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return html.escape(str(value))


def html_table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str]], digits: int = 2) -> str:
    """An HTML ``<table>`` of ``rows`` with ``columns`` = [(key, header), ...]."""
    head = "".join(f"<th>{html.escape(h)}</th>" for _, h in columns)
    body = "".join("<tr>" + "".join(f"<td>{_cell(r.get(k), digits)}</td>" for k, _ in columns) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _section(sid: str, title: str, body: str) -> str:
    return f'<section id="{sid}"><h2>{html.escape(title)}</h2>\n{body}\n</section>'


def _note(text: str) -> str:
    return f'<p class="note">{html.escape(text)}</p>'


def _overview(runs: Sequence[RunData], sources: Sequence[Path]) -> str:
    items = "".join(f"<li><code>{html.escape(str(r.path))}</code>: {html.escape(r.track)} run, method "
                    f"<b>{html.escape(str(r.method or '-'))}</b></li>" for r in runs)
    nav = "".join(f'<a href="#{sid}">{html.escape(t)}</a>' for sid, t in SECTIONS[1:])
    return (f"<nav>{nav}</nav><p>{len(runs)} run(s) from {len(sources)} director{'y' if len(sources) == 1 else 'ies'}; "
            f"generated {html.escape(time.strftime('%Y-%m-%d %H:%M:%S %Z'))}.</p><ul>{items}</ul>")


def _curves(runs: Sequence[RunData]) -> str:
    parts, missing = [], []
    for run in runs:
        png = plots.training_curves(run)
        if png is None:
            missing.append(run.name)
        else:
            parts.append(f"<h3>{html.escape(run.name)}</h3>{_img(png, f'training curves of {run.name}')}")
    if missing:
        parts.append(_note(f"No per-step training log for: {', '.join(missing)} (one-shot method, train-only run, or fewer "
                           "steps than trainer.args.logging_steps)."))
    return "\n".join(parts)


def _comparison(runs: Sequence[RunData]) -> str:
    parts = []
    for track in ("vision", "llm"):
        png = plots.comparison_bars(runs, track)
        if png is not None:
            parts.append(f"<h3>{track}</h3>{_img(png, f'{track} method comparison')}")
    return "\n".join(parts) or _note("No headline metrics to compare.")


def _distributions(runs: Sequence[RunData]) -> str:
    parts = []
    for run in runs:
        png = plots.score_distributions(run)
        if png is not None:
            parts.append(f"<h3>{html.escape(run.name)}</h3>{_img(png, f'confidence distributions of {run.name}')}")
    intro = _note("True-class confidence of forget, retain and test samples for the original, unlearned and retrained "
                  "models (the MIA-efficacy attack separates retain from test by this score, then asks how much of the "
                  "forget set looks like non-members). After good unlearning the forget curve matches the retrained model's.")
    return intro + ("\n".join(parts) or _note("No per-sample evaluation files (eval/*.json with confidences) were found."))


def _tables(runs: Sequence[RunData]) -> str:
    parts = []
    for track, rows in compare_rows(runs).items():
        parts.append(f"<h3>summary ({track})</h3>" + html_table(rows, columns_for(track, rows), 2 if track == "vision" else 4))
    for run in runs:
        if run.track == "vision" and run.rows:
            parts.append(f"<h3>{html.escape(run.name)}</h3>" + html_table(run.rows, ROW_COLUMNS))
    return "\n".join(parts)


def render_report(runs: Sequence[RunData], sources: Sequence[Path], title: str = "obliviate report") -> str:
    """The report's HTML text."""
    bodies = {
        "overview": _overview(runs, sources),
        "training-curves": _curves(runs),
        "method-comparison": _comparison(runs),
        "score-distributions": _distributions(runs),
        "metric-tables": _tables(runs),
    }
    sections = "\n".join(_section(sid, t, bodies[sid]) for sid, t in SECTIONS)
    tuning = tune_section(sources, _img)  # obliviate tune dirs: objective over trials, validation
    if tuning is not None:
        sections = sections.replace('<section id="training-curves">', _section("tuning", "Tuning", tuning) + '\n<section id="training-curves">', 1)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{CSS}</style></head>\n'
            f"<body><h1>{html.escape(title)}</h1>\n{sections}\n</body></html>\n")


def write_report(paths: Sequence[str | Path], output: str | Path | None = None) -> Path:
    """Build the report of run dirs / quickstart dirs and write it atomically.

    Args:
        paths: Run directories (``metrics.json``) or quickstart directories (``summary.json``).
        output: The HTML file; default ``<first dir>/report.html``.

    Returns:
        The path written.
    """
    sources = [Path(p) for p in paths]
    runs = load_runs(list(sources))
    out = Path(output) if output else sources[0] / "report.html"
    title = "obliviate report: " + ", ".join(p.name or str(p) for p in sources)
    atomic_write_text(out, render_report(runs, sources, title))
    return out


__all__ = ["SECTIONS", "VISION_KEYS", "html_table", "render_report", "write_report"]
