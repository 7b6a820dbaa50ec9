"""Read finished run directories for reports and comparisons.

Three kinds of directories are understood, recognised by the files they hold:

- a **vision run** (``obliviate unlearn``/``train``): ``metrics.json`` with ``original``,
  ``unlearned`` and ``retrain`` blocks, ``log_history`` and ``eval/{stage}.json``;
- an **LLM run**: ``metrics.json`` with ``"track": "llm"``: the forget / retain answer
  probability and NLL before and after (``prob`` / ``nll``), plus ``TOFU_SUMMARY.json`` or
  ``TOFU_EVAL.json`` (anywhere below the run dir) whose values are ``{"agg_value": ...}``;
  an LLM ``train`` run gives one entry per trained model (``<dir>/target``, ``<dir>/retain``:
  before = the model it started from, after = the trained model);
- a **quickstart dir**: ``summary.json`` and one run dir per setting and method
  (``<dir>/<setting>/<method>/``; the LLM quickstart: ``<dir>/<method>/``).

A directory whose manifest says the run did not finish (``running``, ``interrupted``,
``failed``) and that has no ``metrics.json`` is skipped with a note, so ``outputs/*`` works.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from obliviate.errors import DataError
from obliviate.io import read_json
from obliviate.report.tune import validation_dirs

VISION_KEYS = ("UA", "RA", "TA", "MIA", "avg_gap", "rte_s")
# Answer probability p = mean exp(-answer NLL) and mean answer NLL of the forget / retain sets,
# before and after the run (metrics.json "prob" / "nll").
LLM_PROB_KEYS = (
    ("forget_prob_before", "forget p before"),
    ("forget_prob_after", "forget p after"),
    ("retain_prob_before", "retain p before"),
    ("retain_prob_after", "retain p after"),
)
LLM_NLL_KEYS = (
    ("forget_nll_before", "forget NLL before"),
    ("forget_nll_after", "forget NLL after"),
    ("retain_nll_before", "retain NLL before"),
    ("retain_nll_after", "retain NLL after"),
)
# (key in TOFU_SUMMARY/TOFU_EVAL, column header); every key is optional.
TOFU_KEYS = (
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
LLM_KEYS = (*LLM_PROB_KEYS, *LLM_NLL_KEYS, *TOFU_KEYS)
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
        setting: What was forgotten (quickstart setting, or the run's forget selection /
            forget data set): runs are compared with the reference models of the same setting.
        role: ``"run"``; an LLM train run's models are the references: ``"original"`` (the
            target model, the one to unlearn) and ``"retrain"`` (the retain model).
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
    setting: str | None = None
    role: str = "run"


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


def _mean_prob(values: Any) -> float | None:
    if not isinstance(values, list) or not values:
        return None
    finite = [float(v) for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    return sum(math.exp(-v) for v in finite) / len(finite) if finite else None


def _prob_nll(run_dir: Path | None, metrics: dict[str, Any]) -> dict[str, Any]:
    """``forget_prob_before`` ... ``retain_nll_after`` of an LLM unlearning run (``metrics.json``
    ``prob``/``nll``; runs written before ``prob`` existed: from ``eval/nll_{before,after}.json``)."""
    out: dict[str, Any] = {}
    nll, prob = metrics.get("nll") or {}, metrics.get("prob") or {}
    for when in ("before", "after"):
        per = None
        for split in ("forget", "retain"):
            out[f"{split}_nll_{when}"] = _agg((nll.get(when) or {}).get(split))
            p = _agg((prob.get(when) or {}).get(split))
            if p is None:
                if per is None:
                    path = None if run_dir is None else run_dir / "eval" / f"nll_{when}.json"
                    per = _read(path) if path is not None and path.is_file() else {}
                p = _mean_prob(per.get(split)) if isinstance(per, dict) else None
            out[f"{split}_prob_{when}"] = p
    return {k: v for k, v in out.items() if v is not None}


def _llm_headline(metrics: dict[str, Any], tofu: dict[str, Any], run_dir: Path | None = None) -> dict[str, Any]:
    out: dict[str, Any] = _prob_nll(run_dir, metrics)
    for key, _ in TOFU_KEYS:
        for source in (tofu, metrics, metrics.get("eval") or {}, metrics.get("unlearned") or {}):
            if isinstance(source, dict) and _agg(source.get(key)) is not None:
                out[key] = _agg(source[key])
                break
    return out


def _llm_train_runs(run_dir: Path, metrics: dict[str, Any], name: str, history: list) -> list[RunData]:
    """One entry per model an LLM ``train`` run trained (before = the initial model)."""
    initial = metrics.get("initial") or {}
    runs = []
    for stage, info in (metrics.get("stages") or {}).items():
        per_stage = {"nll": {"before": initial.get("nll") or {}, "after": info.get("nll") or {}},
                     "prob": {"before": initial.get("prob") or {}, "after": info.get("prob") or {}}}
        head = _prob_nll(None, per_stage)
        ev = next(iter((info.get("eval") or {}).values()), {}) if isinstance(info.get("eval"), dict) else {}
        head.update({k: _agg(v) for k, v in (ev.get("summary") or {}).items() if k in dict(TOFU_KEYS) and _agg(v) is not None})
        label = f"{name}/{stage}"
        method = f"train {stage}"
        runs.append(RunData(label, run_dir, "llm", method, [{"method": method, **head}], {"run": label, "method": method, **head},
                            [h for h in info.get("log_history") or [] if isinstance(h, dict)], {}, None,
                            _llm_setting(metrics), {"retain": "retrain", "target": "original"}.get(stage, "run")))
    return runs


def _llm_setting(metrics: dict[str, Any]) -> str | None:
    forget = (metrics.get("data") or {}).get("forget")
    return str(forget.get("name")) if isinstance(forget, dict) and forget.get("name") else None


def _vision_setting(metrics: dict[str, Any]) -> str | None:
    sel = {k: v for k, v in (metrics.get("forget") or {}).items() if k.startswith("forget_")}
    return ", ".join(f"{k}={v}" for k, v in sorted(sel.items())) or None


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
        head = _llm_headline(metrics, tofu, run_dir)
        method = metrics.get("method") or metrics.get("handler")
        return RunData(name, run_dir, "llm", method, [{"method": method or name, **head}], {"run": name, "method": method, **head},
                       history, {}, group, group or _llm_setting(metrics))
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
    return RunData(name, run_dir, "vision", method, rows, head, history, _eval_files(run_dir), group, group or _vision_setting(metrics))


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
                run = RunData(f"{sname}/{method}", sub, "vision", method, [], head, group=sname, setting=sname)
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
        elif not (p / "metrics.json").is_file() and unfinished_status(p) is not None:
            print(f"note: skipping '{p}' (its run is {unfinished_status(p)}, no metrics.json)", file=sys.stderr)
        else:
            runs.extend(expand_run(p))
    if not runs:
        raise DataError(f"none of the {len(paths)} run dir(s) holds a finished run (metrics.json or summary.json)")
    return runs


def unfinished_status(run_dir: Path) -> str | None:
    """The manifest status of a run that did not complete (``running``/``interrupted``/``failed``), else ``None``."""
    path = Path(run_dir) / "manifest.json"
    if not path.is_file():
        return None
    try:
        status = read_json(path).get("status")
    except (ValueError, AttributeError, OSError):
        return None
    return status if status in ("running", "interrupted", "failed") else None


def expand_run(run_dir: Path) -> list[RunData]:
    """:func:`load_run`, except that an LLM ``train`` run gives one entry per trained model."""
    path = Path(run_dir) / "metrics.json"
    metrics = _read(path) if path.is_file() else None
    if isinstance(metrics, dict) and metrics.get("track") == "llm" and metrics.get("command") == "train":
        history = [h for h in metrics.get("log_history") or [] if isinstance(h, dict)]
        runs = _llm_train_runs(Path(run_dir), metrics, Path(run_dir).name, history)
        if runs:
            return runs
    return [load_run(run_dir)]
