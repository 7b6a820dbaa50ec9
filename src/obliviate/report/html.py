"""``obliviate report RUN_DIR ... [-o FILE]``: one self-contained HTML report.

The page has five sections (element ids in brackets): overview (``overview``), training
curves (``training-curves``), method comparison (``method-comparison``), MIA / confidence
score distributions (``score-distributions``) and metric tables (``metric-tables``). Every
image is a PNG embedded as a ``data:`` URI and the CSS is inline, so the file can be mailed
or archived on its own. It is written atomically.

The method comparison is one small chart per metric (horizontal bars, sorted, the original
and the retrained model in their own colours), per forget setting, so it stays readable with
30+ runs; LLM runs compare the forget / retain answer probability after unlearning (and the
TOFU metrics when an evaluation ran). Training curves are drawn for runs that logged at least
:data:`~obliviate.report.plots.MIN_CURVE_POINTS` points; shorter logs are shown as a table.
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
from obliviate.report.runs import LLM_PROB_KEYS, TOFU_KEYS, VISION_KEYS, RunData, load_runs
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
nav a{margin-right:1em}.charts{display:grid;grid-template-columns:repeat(auto-fill,minmax(340px,1fr));gap:.6em;align-items:start}
.charts img{width:100%}.charts.wide{grid-template-columns:repeat(auto-fill,minmax(520px,1fr))}.logs{overflow-x:auto}
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
                    f"<b>{html.escape(str(r.method or '-'))}</b>{f', forget {html.escape(r.setting)}' if r.setting else ''}</li>"
                    for r in runs)
    nav = "".join(f'<a href="#{sid}">{html.escape(t)}</a>' for sid, t in SECTIONS[1:])
    return (f"<nav>{nav}</nav><p>{len(runs)} run(s) from {len(sources)} director{'y' if len(sources) == 1 else 'ies'}; "
            f"generated {html.escape(time.strftime('%Y-%m-%d %H:%M:%S %Z'))}.</p><ul>{items}</ul>")


def _log_table(run: RunData) -> str:
    """The logged values of a short training log (too few points for a curve)."""
    skip = {"total_flos", "train_samples_per_second", "train_steps_per_second"}
    keys: list[str] = []
    for entry in run.log_history:
        keys += [k for k in entry if k not in skip and k not in keys and not isinstance(entry[k], (dict, list))]
    keys.sort(key=lambda k: (k not in ("step", "epoch"), k))
    rows = [{**e, "step": e.get("step", i)} for i, e in enumerate(run.log_history)]
    return f'<div class="logs">{html_table(rows, [(k, k) for k in keys], 4)}</div>'


def _curves(runs: Sequence[RunData]) -> str:
    parts, missing, short = [], [], []
    for run in runs:
        png = plots.training_curves(run)
        if png is not None:
            parts.append(f"<div><h3>{html.escape(run.name)}</h3>{_img(png, f'training curves of {run.name}')}</div>")
        elif run.log_history:
            short.append(f"<h3>{html.escape(run.name)}</h3>{_log_table(run)}")
        else:
            missing.append(run.name)
    parts = [f'<div class="charts wide">{"".join(parts)}</div>'] if parts else []
    if short:
        parts.append(_note(f"Runs that logged fewer than {plots.MIN_CURVE_POINTS} points (few steps for trainer.args.logging_steps, "
                           "or only the end-of-training means): their logged values.") + "\n".join(short))
    if missing:
        parts.append(_note(f"No training log for: {', '.join(missing)} (one-shot method or train-only run)."))
    return "\n".join(parts)


VISION_METRICS = (("UA", "UA (%)", False), ("RA", "RA (%)", False), ("TA", "TA (%)", False), ("MIA", "MIA-efficacy (%)", False),
                  ("avg_gap", "Avg. Gap to retrain", True), ("rte_s", "RTE (s)", True))
LLM_LOWER = {"extraction_strength", "forget_Q_A_ROUGE", "forget_prob_after"}


def _label(run: RunData, group: Sequence[RunData]) -> str:
    """The method in a quickstart setting (unique there), else the run's name without the
    dash-separated words every run of the group shares at its start and end."""
    methods = [r.method for r in group if r.role == "run"]
    if run.method and methods.count(run.method) == 1 and run.group:
        return str(run.method)
    names = [r.name.split("-") for r in group]
    words = run.name.split("-")
    if len(names) < 2:
        return run.name
    head = 0
    while all(len(n) > head + 1 and n[head] == names[0][head] for n in names):
        head += 1
    tail = 0
    while all(len(n) > head + tail + 1 and n[-1 - tail] == names[0][-1 - tail] for n in names):
        tail += 1
    return "-".join(words[head: len(words) - tail]) or run.name


def _vision_charts(group: Sequence[RunData]) -> list[bytes]:
    ref_rows = next((r.rows for r in group if r.rows), [])
    original = next((row for row in ref_rows if row.get("method") == "original"), None)
    retrain = next((row for row in ref_rows if row.get("method") == "retrain"), None)
    pngs = []
    for key, title, lower in VISION_METRICS:
        entries = [(_label(r, group), r.headline.get(key), "run") for r in group]
        entries += [("original", original.get(key), "original")] if original and key != "rte_s" else []
        entries += [("retrain", retrain.get(key), "retrain")] if retrain else []
        if any(plots._finite(v) for _, v, role in entries if role == "run"):
            pngs.append(plots.metric_bars(entries, title, lower_is_better=lower))
    return pngs


def _llm_charts(group: Sequence[RunData]) -> list[bytes]:
    runs = [r for r in group if r.role == "run"]
    refs = [r for r in group if r.role != "run"]  # an LLM train run's target (original) and retain (retrain) models
    first = runs[0] if runs else None
    pngs = []
    metrics = [(k, h, k.replace("_after", "_before")) for k, h in LLM_PROB_KEYS if k.endswith("_after")]
    metrics += [(k, h, None) for k, h in TOFU_KEYS]
    for key, title, before_key in metrics:
        entries = [(_label(r, runs), r.headline.get(key), "run") for r in runs]
        has_original = any(r.role == "original" for r in refs)
        if first is not None and before_key and not has_original and plots._finite(first.headline.get(before_key)):
            entries.append(("before unlearning", first.headline[before_key], "original"))
        entries += [(r.name, r.headline.get(key), r.role) for r in refs]
        if any(plots._finite(v) for _, v, role in entries if role == "run"):
            pngs.append(plots.metric_bars(entries, title, lower_is_better=key in LLM_LOWER))
    return pngs


def _comparison(runs: Sequence[RunData]) -> str:
    parts = []
    for track, charts in (("vision", _vision_charts), ("llm", _llm_charts)):
        groups: dict[str, list[RunData]] = {}
        for r in runs:
            if r.track == track:
                groups.setdefault(r.setting or "all runs", []).append(r)
        for setting, group in groups.items():
            pngs = charts(group)
            if pngs:
                title = f"{track}: {setting}" if len(groups) > 1 or setting != "all runs" else track
                imgs = "".join(_img(png, f"{track} {setting} metric {i}") for i, png in enumerate(pngs))
                parts.append(f'<h3>{html.escape(title)}</h3><div class="charts">{imgs}</div>')
    intro = _note("One chart per metric, best first; grey: the original model (LLM: before unlearning), green: the retrained "
                  "model (dashed line: its value; the runs should match it). LLM p: answer probability, the mean over QA pairs "
                  "of exp(-mean answer-token NLL).")
    return (intro + "\n".join(parts)) if parts else _note("No headline metrics to compare.")


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
    names = [p.name or str(p) for p in sources]
    title = "obliviate report: " + (", ".join(names) if len(names) <= 3 else f"{len(runs)} runs from {len(names)} directories")
    atomic_write_text(out, render_report(runs, sources, title))
    return out


__all__ = ["SECTIONS", "VISION_KEYS", "html_table", "render_report", "write_report"]
