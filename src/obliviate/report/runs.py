"""Read finished run directories for reports and comparisons.

Three kinds of directories are understood, recognised by the files they hold:

- a **vision run** (``obliviate unlearn``/``train``): ``metrics.json`` with ``original``,
  ``unlearned`` and ``retrain`` blocks, ``log_history`` and ``eval/{stage}.json``;
- an **LLM run**: ``metrics.json`` with ``"track": "llm"``, plus ``TOFU_SUMMARY.json`` or
  ``TOFU_EVAL.json`` (anywhere below the run dir) whose values are ``{"agg_value": ...}``;
- a **quickstart dir**: ``summary.json`` and one vision run dir per setting and method
  (``<dir>/<setting>/<method>/``).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from obliviate.errors import DataError
from obliviate.io import read_json
from obliviate.report.tune import validation_dirs

VISION_KEYS = ("UA", "RA", "TA", "MIA", "avg_gap", "rte_s")
# (key in TOFU_SUMMARY/TOFU_EVAL, column header); every key is optional.
LLM_KEYS = (
    ("forget_quality", "Forget quality"),
    ("model_utility", "Model utility"),
    ("forget_truth_ratio", "Forget truth ratio"),
    ("forget_Q_A_ROUGE", "Forget ROUGE"),
    ("privleak", "PrivLeak"),
    ("extraction_strength", "Extraction strength"),
    # MUSE (eval=muse) and lm-evaluation-harness (eval=lm_eval) headline keys
    ("forget_verbmem_ROUGE", "VerbMem"),
    ("forget_knowmem_ROUGE", "KnowMem forget"),
    ("retain_knowmem_ROUGE", "KnowMem retain"),
    ("wmdp_bio/acc", "WMDP-bio acc"),
    ("wmdp_cyber/acc", "WMDP-cyber acc"),
    ("mmlu/acc", "MMLU acc"),
)
TOFU_FILES = ("TOFU_SUMMARY.json", "TOFU_EVAL.json")


@dataclass
class RunData:
    """One run (or one method of a quickstart setting), ready for tables and plots.

    Attributes:
        name: Display name (``<dir name>`` or ``<setting>/<method>``).
        path: The run directory.
        track: ``"vision"`` or ``"llm"``.
        method: The unlearning method (``None`` for a train-only run).
        rows: Metric rows, each ``{"method": stage, metric: value, ...}``.
        headline: The unlearned model's headline metrics (the compare table row).
        log_history: The HF Trainer's ``log_history`` of the unlearning run.
        per_sample: ``{stage: {"forget"|"retain"|"test": {"confidence": [...], ...}}}``.
        group: Quickstart setting name (``None`` for a plain run dir).
    """

    name: str
    path: Path
    track: str
    method: str | None
    rows: list[dict[str, Any]]
    headline: dict[str, Any]
    log_history: list[dict[str, Any]] = field(default_factory=list)
    per_sample: dict[str, Any] = field(default_factory=dict)
    group: str | None = None


def _read(path: Path) -> Any:
    try:
        return read_json(path)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path} is not valid JSON ({exc.msg}, line {exc.lineno})") from None


def _agg(value: Any) -> Any:
    """``{"agg_value": x}`` -> x; plain numbers pass through; NaN -> None."""
    if isinstance(value, dict):
        value = value.get("agg_value")
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value if isinstance(value, (int, float)) else None


def find_tofu_summary(run_dir: Path) -> dict[str, Any]:
    """Aggregate TOFU values of an LLM run (``TOFU_SUMMARY.json`` first, then ``TOFU_EVAL.json``)."""
    for name in TOFU_FILES:
        hits = sorted(run_dir.rglob(name), key=lambda p: (len(p.parts), str(p)))
        if hits:
            data = _read(hits[0])
            return {k: _agg(v) for k, v in data.items() if _agg(v) is not None}
    return {}


def _llm_headline(metrics: dict[str, Any], tofu: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, _ in LLM_KEYS:
        for source in (tofu, metrics, metrics.get("eval") or {}, metrics.get("unlearned") or {}):
            if isinstance(source, dict) and _agg(source.get(key)) is not None:
                out[key] = _agg(source[key])
                break
    return out


def _eval_files(run_dir: Path) -> dict[str, Any]:
    out = {}
    for stage in ("original", "unlearned", "retrain"):
        path = run_dir / "eval" / f"{stage}.json"
        if path.is_file():
            data = _read(path)
            if isinstance(data, dict) and any(isinstance(v, dict) and "confidence" in v for v in data.values()):
                out[stage] = data
    return out


def load_run(run_dir: str | Path, name: str | None = None, group: str | None = None) -> RunData:
    """Load one vision or LLM run directory.

    Raises:
        DataError: The directory or its ``metrics.json`` is missing or unreadable.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise DataError(f"run dir '{run_dir}' does not exist")
    path = run_dir / "metrics.json"
    if not path.is_file():
        raise DataError(f"'{run_dir}' has no metrics.json (not a finished obliviate run dir, or a quickstart dir without summary.json)")
    metrics = _read(path)
    if not isinstance(metrics, dict):
        raise DataError(f"{path} must hold a JSON object")
    name = name or run_dir.name
    history = [h for h in metrics.get("log_history") or [] if isinstance(h, dict)]
    if metrics.get("track") == "llm":
        tofu = find_tofu_summary(run_dir)
        head = _llm_headline(metrics, tofu)
        method = metrics.get("method") or metrics.get("handler")
        return RunData(name, run_dir, "llm", method, [{"method": method or name, **head}], {"run": name, "method": method, **head},
                       history, {}, group)
    stages = [s for s in ("original", "unlearned", "retrain") if isinstance(metrics.get(s), dict)]
    if not stages:
        raise DataError(f"{path} has neither vision results (original/unlearned/retrain) nor \"track\": \"llm\"")
    method = metrics.get("method")
    rows = []
    for stage in stages:
        m = metrics[stage]
        row = {"method": method if stage == "unlearned" and method else stage, **{k: m.get(k) for k in VISION_KEYS}}
        if stage == "retrain":
            row["avg_gap"], row["rte_s"] = 0.0, m.get("train_time_s")
        rows.append(row)
    main = metrics.get("unlearned") or metrics.get("original") or {}
    head = {"run": name, "method": method, **{k: main.get(k) for k in VISION_KEYS}}
    return RunData(name, run_dir, "vision", method, rows, head, history, _eval_files(run_dir), group)


def load_quickstart(qs_dir: Path) -> list[RunData]:
    """The per-method runs of a quickstart dir (rows from ``summary.json``)."""
    summary = _read(qs_dir / "summary.json")
    runs: list[RunData] = []
    if summary.get("track") == "llm":  # `obliviate quickstart track=llm`: one LLM unlearning run dir per method
        for row in summary.get("rows", []):
            sub = qs_dir / str(row.get("method"))
            if (sub / "metrics.json").is_file():
                runs.append(load_run(sub, name=str(row.get("method"))))
        return runs
    for setting in summary.get("settings", []):
        sname = setting.get("setting", "setting")
        retrain = setting.get("retrain") or {}
        for row in setting.get("rows", []):
            method = row.get("method")
            if method in (None, "original", "retrain"):
                continue
            sub = qs_dir / sname / str(method)
            if (sub / "metrics.json").is_file():
                run = load_run(sub, name=f"{sname}/{method}", group=sname)
            else:  # summary only: no curves or distributions
                head = {"run": f"{sname}/{method}", **{k: row.get(k) for k in VISION_KEYS}, "method": method}
                run = RunData(f"{sname}/{method}", sub, "vision", method, [], head, group=sname)
            original = next((r for r in setting.get("rows", []) if r.get("method") == "original"), None)
            run.rows = [r for r in (original, {**row}, retrain) if r]
            runs.append(run)
    return runs


def load_runs(paths: list[str | Path]) -> list[RunData]:
    """Expand run dirs and quickstart dirs into a flat list of runs.

    Raises:
        DataError: A path is neither a run dir (``metrics.json``) nor a quickstart dir
            (``summary.json``), or no runs were given.
    """
    if not paths:
        raise DataError("no run dirs given; pass one or more directories that hold metrics.json or summary.json")
    runs: list[RunData] = []
    for p in map(Path, paths):
        if (p / "tune.json").is_file() and not (p / "metrics.json").is_file():  # obliviate tune: its validation runs
            runs.extend(load_run(d, name=f"{p.name}/{name}") for name, d in validation_dirs(p))
        elif (p / "summary.json").is_file() and not (p / "metrics.json").is_file():
            qs = load_quickstart(p)
            if not qs:
                raise DataError(f"'{p}/summary.json' lists no method results")
            runs.extend(qs)
        else:
            runs.append(load_run(p))
    return runs
