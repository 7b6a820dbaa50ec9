"""WMDP / MMLU (any lm-evaluation-harness task) through ``lm_eval`` as a dependency.

Nothing is re-implemented: the model goes through ``lm_eval.simple_evaluate`` with the
harness's own task definitions (prompts, answer choices, metrics), as in the reference
framework's ``LMEvalEvaluator``. ``pip install 'obliviate[lm_eval]'``.

**Local-file mode.** ``local_data`` maps a hub dataset id to a local directory in the hub's
layout (``{"cais/wmdp": "data/wmdp", "cais/mmlu": "data/mmlu"}``). Every leaf task (groups
such as ``mmlu`` or ``wmdp`` are expanded) whose ``dataset_path`` is mapped gets an override
YAML that ``include``s the harness's own task file and only swaps the data source for the
``parquet`` / ``json`` builder with ``data_files`` from ``<dir>/<dataset_name>/<split>-*.parquet``
(the hub's files), ``<dir>/<dataset_name>/<split>.jsonl|.json`` or, for the test split,
``<dir>/<dataset_name>.jsonl|.json|.parquet``. A mapped directory that does not hold the
task's files leaves the task on the hub (logged), so a WMDP corpora folder without the test
sets still works online.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import yaml

from obliviate.errors import ConfigError, DataError

log = logging.getLogger(__name__)
EVAL_FILE, SUMMARY_FILE = "LMEval_EVAL.json", "LMEval_SUMMARY.json"
_SPLIT_KEYS = ("test_split", "validation_split", "training_split", "fewshot_split")


def _require_lm_eval() -> Any:
    try:
        import lm_eval
    except ImportError:
        raise ConfigError("eval=lm_eval needs lm-evaluation-harness: pip install 'obliviate[lm_eval]' (or pip install lm-eval)") from None
    return lm_eval


def task_manager(task_dirs: list[str] | None = None, include_path: list[str] | None = None) -> Any:
    """A ``lm_eval.tasks.TaskManager``; ``task_dirs`` (folders under ``lm_eval/tasks``, e.g.
    ``["wmdp"]``) indexes only those instead of every built-in task (much faster)."""
    lm_eval = _require_lm_eval()
    from lm_eval.tasks import TaskManager

    paths = list(include_path or [])
    if task_dirs is None:
        return TaskManager(include_path=paths or None)
    root = Path(lm_eval.__file__).parent / "tasks"
    dirs = []
    for d in task_dirs:
        if not (root / d).is_dir():
            raise ConfigError(f"eval.lm_eval.task_dirs: '{d}' is not a folder of lm_eval/tasks")
        dirs.append(str(root / d))
    return TaskManager(include_path=dirs + paths, include_defaults=False)


def leaf_tasks(tm: Any, name: str) -> list[str]:
    """The individual tasks of a task, group or tag name (groups expanded recursively)."""
    from lm_eval.tasks._index import Kind
    from lm_eval.tasks._yaml_loader import load_yaml

    entry = tm.task_index.get(name)
    if entry is None:
        import difflib

        close = difflib.get_close_matches(name, tm.all_tasks, n=3)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise ConfigError(f"lm-eval task '{name}' is unknown.{hint}")
    if entry.kind == Kind.TAG:
        return sorted(entry.tags)  # a tag lists its tasks
    if entry.kind != Kind.GROUP:
        return [name]
    out: list[str] = []
    for child in load_yaml(entry.yaml_path, resolve_func=False).get("task") or []:
        if isinstance(child, str):
            out += leaf_tasks(tm, child)
        elif isinstance(child, dict) and "task" in child and isinstance(child["task"], str) and child["task"] in tm.task_index:
            out += leaf_tasks(tm, child["task"])
    return out


def _files(root: Path, dataset_name: str | None, split: str) -> list[Path]:
    sub = root / dataset_name if dataset_name else root
    for pattern in (f"{split}-*.parquet", f"{split}.parquet", f"{split}.jsonl", f"{split}.json"):
        found = sorted(sub.glob(pattern))
        if found:
            return found
    return []


def local_overrides(tm: Any, tasks: list[str], local_data: dict[str, str], out_dir: Path) -> dict[str, dict[str, Any]]:
    """Write override YAMLs into ``out_dir`` for every leaf task whose data is local.

    Returns:
        ``{task: {"dataset_path", "data_files"}}`` of the tasks switched to local files.

    Raises:
        DataError: a mapped directory holds some but not all files a task needs.
    """
    mapping = {k: Path(str(v)).expanduser() for k, v in (local_data or {}).items() if v}
    done: dict[str, dict[str, Any]] = {}
    for name in dict.fromkeys(t for task in tasks for t in leaf_tasks(tm, task)):
        entry = tm.task_index[name]
        cfg = entry.cfg or {}
        root = mapping.get(str(cfg.get("dataset_path")))
        if root is None or entry.yaml_path is None:
            continue
        dname = cfg.get("dataset_name")
        test = _files(root, dname, str(cfg.get("test_split") or "test"))
        if not test:
            single = [root / f"{dname}{ext}" for ext in (".jsonl", ".json", ".parquet")] if dname else []
            test = [p for p in single if p.is_file()][:1]
        if not test:
            if root.is_dir() and dname and (root / dname).exists():
                raise DataError(f"lm-eval task {name}: no {cfg.get('test_split') or 'test'} split in {root / dname} "
                                "(looked for test-*.parquet, test.jsonl, test.json)")
            log.info("lm-eval task %s: %s has no %s files; using the hub", name, root, dname)
            continue
        kind = "parquet" if test[0].suffix == ".parquet" else "json"
        override: dict[str, Any] = {"include": str(entry.yaml_path), "task": name, "dataset_path": kind, "dataset_name": None}
        data_files: dict[str, list[str]] = {}
        for key in _SPLIT_KEYS:
            split = cfg.get(key)
            if not split:
                continue
            found = test if key == "test_split" else [f for f in _files(root, dname, str(split)) if (f.suffix == ".parquet") == (kind == "parquet")]
            if found:
                data_files[str(split)] = [str(f) for f in found]
            else:
                override[key] = None  # e.g. MMLU's dev split (few-shot examples) not copied: zero-shot only
        override["dataset_kwargs"] = {"data_files": data_files}
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / f"{name}.yaml").write_text(yaml.safe_dump(override, sort_keys=False), encoding="utf-8")
        done[name] = {"dataset_path": kind, "data_files": data_files}
    return done


def summarize(results: dict[str, Any], task: str, groups: list[str]) -> dict[str, Any]:
    """``{"<task>/<metric>": value}`` of one requested task (group aggregates for groups), as
    the reference's ``LMEvalEvaluator.summarize`` (``alias`` dropped, ``,none`` suffix stripped)."""
    block = (results.get("groups") or {}).get(task) if task in groups else None
    if block is None:
        block = (results.get("results") or {}).get(task, {})
    out: dict[str, Any] = {}
    for metric, value in block.items():
        if metric == "alias":
            continue
        key = f"{task}/{metric.split(',', 1)[0].strip()}"
        try:
            out[key] = float(value)
        except (TypeError, ValueError):
            out[key] = value
    return out


def evaluate_lm_harness(model: Any, tokenizer: Any, tasks: list[str], *, local_data: dict[str, str] | None = None,
                        task_dirs: list[str] | None = None, work_dir: str | Path, batch_size: int = 16, limit: int | float | None = None,
                        simple_evaluate_args: dict[str, Any] | None = None) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Run lm-evaluation-harness tasks on an in-memory model.

    Args:
        model: A ``transformers`` causal LM.
        tokenizer: Its tokenizer.
        tasks: Task / group names (``wmdp_cyber``, ``mmlu``, ...).
        local_data: Hub dataset id -> local directory (see the module docstring).
        task_dirs: Index only these folders of ``lm_eval/tasks`` (``None``: all).
        work_dir: Where the local-task override YAMLs are written.
        batch_size: Requests per forward call.
        limit: First N documents per task (quick looks; ``None``: all).
        simple_evaluate_args: Further ``lm_eval.simple_evaluate`` arguments.

    Returns:
        ``(logs, summary, local)``: per-task sample logs (the reference's ``LMEval_EVAL.json``),
        ``{"<task>/<metric>": value}`` and the tasks switched to local files.
    """
    lm_eval = _require_lm_eval()
    from lm_eval.models.huggingface import HFLM

    if not tasks:
        raise ConfigError("eval.lm_eval.tasks is empty; e.g. eval.lm_eval.tasks=[wmdp_cyber,mmlu]")
    override_dir = Path(work_dir) / "lm_eval_tasks"
    base = task_manager(task_dirs)
    local = local_overrides(base, tasks, local_data or {}, override_dir)
    tm = task_manager(task_dirs, [str(override_dir)]) if local else base
    was_training = model.training
    model.eval()
    try:
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=int(batch_size))
        logs: dict[str, Any] = {}
        summary: dict[str, Any] = {}
        for task in tasks:
            res = lm_eval.simple_evaluate(model=lm, tasks=[task], task_manager=tm, limit=limit, **dict(simple_evaluate_args or {}))
            logs[task] = res.get("samples", {})
            summary.update(summarize(res, task, tm.all_groups))
    finally:
        model.train(was_training)
    return logs, summary, local
