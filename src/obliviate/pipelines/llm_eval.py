"""TOFU evaluation wiring for the LLM track: ``obliviate eval`` and evaluation in train/unlearn.

The ``eval`` config group (``configs/eval/tofu.yaml``, the reference framework's ``tofu``
evaluator) names the splits: forget (``${forget_split}_perturbed``: answer, paraphrased and
perturbed answers), retain (``retain_perturbed``), real authors and world facts
(``*_perturbed``) and holdout (``${holdout_split}``). The files are read from
``eval.tofu.data_path`` (default ``${paths.tofu}``), tokenised with the model's template
(cached like training data) and scored by :func:`obliviate.metrics.tofu_eval.evaluate_tofu`.

Outputs (reference schema, atomic writes): ``TOFU_EVAL.json`` (every metric with per-sample
``value_by_index``) and ``TOFU_SUMMARY.json`` (aggregates). During unlearning,
:class:`TofuEvalCallback` writes ``eval/step_<N>/TOFU_SUMMARY.json`` into the run directory.
"""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig
from torch import nn
from transformers import TrainerCallback

from obliviate.distributed import write_json_main
from obliviate.errors import ConfigError
from obliviate.io import read_json
from obliviate.pipelines.common import plain

log = logging.getLogger(__name__)

EVALUATORS = ("TOFUEvaluator", "MUSEEvaluator", "LMEvalEvaluator")  # the last two: obliviate.pipelines.llm_eval_bench
SPLIT_NAMES = ("forget", "retain", "ra", "wf", "holdout")
#: metrics.json / console headline keys (TOFU_SUMMARY keys), in display order.
HEADLINE_KEYS = ("forget_quality", "model_utility", "forget_truth_ratio", "forget_Q_A_Prob", "forget_Q_A_ROUGE",
                 "retain_Q_A_Prob", "retain_Q_A_ROUGE", "privleak", "mia_min_k", "extraction_strength", "exact_memorization")




@dataclass
class Evaluation:
    """One configured evaluator with its tokenised splits.

    Attributes:
        name: Evaluator key under ``eval`` (``tofu``).
        cfg: Its resolved config (``eval.<name>``).
        splits: ``{split: [sample, ...]}`` as :func:`~obliviate.metrics.tofu_eval.evaluate_tofu` takes them.
        files: ``{split: data file}`` (recorded in the run manifest).
    """

    name: str
    cfg: dict[str, Any]
    splits: dict[str, list[dict[str, Any]]]
    files: dict[str, str] = field(default_factory=dict)

    @property
    def counts(self) -> dict[str, int]:
        """Samples per split."""
        return {k: len(v) for k, v in self.splits.items()}


def selected_evaluators(cfg: DictConfig) -> dict[str, dict[str, Any]]:
    """The evaluators selected with ``eval=<name>`` (``{}`` when none is)."""
    node = cfg.get("eval")
    if not node:
        return {}
    out = {}
    for name, ecfg in node.items():
        if ecfg is None:
            continue
        handler = ecfg.get("handler")
        if handler not in EVALUATORS:
            raise ConfigError(f"eval.{name}.handler '{handler}' is unknown; available: {', '.join(EVALUATORS)}")
        out[str(name)] = plain(ecfg)
    return out


def _backend(ecfg: dict[str, Any]) -> Any:
    """The MUSE / lm-eval backend of an evaluator config (``None`` for TOFU)."""
    from obliviate.pipelines.llm_eval_bench import BACKENDS

    return BACKENDS.get(str(ecfg.get("handler")))


def _file(root: str, name: str) -> str:
    local = Path(str(root)).expanduser()
    for ext in (".json", ".jsonl"):
        if (local / f"{name}{ext}").is_file():
            return str(local / f"{name}{ext}")
    return f"{root}:{name}"


def _optional_key(rows: list[dict[str, Any]], key: str | None, split: str) -> str | None:
    """``key`` when every row has it, ``None`` when no row has it; a partial field is an error."""
    from obliviate.errors import DataError

    if not key:
        return None
    have = [key in r for r in rows]
    if all(have):
        return key
    if any(have):
        raise DataError(f"eval split '{split}': row {have.index(False) + 1} has no '{key}' but other rows do; "
                        f"give it to every row or to none")
    log.info("eval split %s has no '%s' field: the metrics that need it are skipped", split, key)
    return None


def load_eval_splits(ecfg: dict[str, Any], tokenizer: Any, template_args: dict[str, Any] | None,
                     cache_dir: str | None = None) -> tuple[dict, dict]:
    """Tokenised TOFU evaluation samples of every split configured in ``ecfg["splits"]``.

    Each sample is ``{"input_ids", "labels", "answer", "index"}`` plus ``"paraphrased"`` /
    ``"perturbed"`` (tokenised alternative answers to the same question) when the split names
    a ``paraphrased_key`` / ``perturbed_key``. ``max_samples`` keeps the first rows of each split.
    A split with ``if_present: true`` (your own QA files, ``eval=qa``) is skipped when its file
    does not exist, and uses its paraphrased / perturbed answers only when every row has them.

    Returns:
        ``(splits, files)``.

    Raises:
        DataError: a missing file or field (named).
    """
    from obliviate.data.text import encode_rows, load_qa_rows

    root = ecfg.get("data_path")
    limit = ecfg.get("max_samples")
    max_length = ecfg.get("max_length", 512)
    qkey_default = ecfg.get("question_key", "question")
    splits: dict[str, list[dict[str, Any]]] = {}
    files: dict[str, str] = {}
    for split, spec in (ecfg.get("splits") or {}).items():
        if spec is None:  # eval.tofu.splits.wf=null drops a split
            continue
        if split not in SPLIT_NAMES:
            raise ConfigError(f"eval split '{split}' is unknown; TOFU splits: {', '.join(SPLIT_NAMES)}")
        path = spec.get("path") or root
        if not path:
            raise ConfigError(f"eval split '{split}' has no data path; set eval.{ecfg.get('_name', 'tofu')}.data_path")
        qk, ak = spec.get("question_key", qkey_default), spec.get("answer_key", "answer")
        pk, tk = spec.get("paraphrased_key"), spec.get("perturbed_key")
        if spec.get("if_present"):
            if _file(str(path), str(spec["name"])).startswith(f"{path}:"):
                log.info("eval split %s: no %s/%s.jsonl, skipped", split, path, spec["name"])
                continue
            rows = load_qa_rows(str(path), str(spec["name"]), spec.get("split", "train"), {qk: str, ak: str})
            pk, tk = (_optional_key(rows, k, split) for k in (pk, tk))
        required = {qk: str, ak: str, **({pk: str} if pk else {}), **({tk: list} if tk else {})}
        rows = load_qa_rows(str(path), str(spec["name"]), spec.get("split", "train"), required)
        if limit:
            rows = rows[: int(limit)]
        enc = encode_rows(rows, tokenizer, template_args, qk, ak, max_length, cache_dir)
        para = encode_rows(rows, tokenizer, template_args, qk, pk, max_length, cache_dir) if pk else None
        pert = encode_rows(rows, tokenizer, template_args, qk, tk, max_length, cache_dir) if tk else None
        samples = []
        for i, row in enumerate(rows):
            ids, labels = enc[i][0]
            s: dict[str, Any] = {"input_ids": ids, "labels": labels, "answer": row[ak], "index": i}
            if para is not None:
                s["paraphrased"] = {"input_ids": para[i][0][0], "labels": para[i][0][1]}
            if pert is not None:
                s["perturbed"] = [{"input_ids": p_ids, "labels": p_lab} for p_ids, p_lab in pert[i]]
            samples.append(s)
        splits[split], files[split] = samples, _file(str(path), str(spec["name"]))
    if not splits:
        raise ConfigError("the TOFU evaluator has no splits; see configs/eval/tofu.yaml")
    return splits, files


def prepare_evaluations(cfg: DictConfig, tokenizer: Any, paths: dict[str, Any]) -> list[Evaluation]:
    """Load the splits of every selected evaluator (before any training: bad files fail fast)."""
    out = []
    data = cfg.get("data") or {}
    cache_dir = paths.get("cache_dir") if data.get("cache_tokenized", True) else None
    template_args = plain(cfg.model.get("template_args")) or {}
    for name, ecfg in selected_evaluators(cfg).items():
        backend = _backend(ecfg)
        loader = backend.load if backend is not None else load_eval_splits
        splits, files = loader({**ecfg, "_name": name}, tokenizer, template_args, cache_dir)
        log.info("eval %s: %s", name, ", ".join(f"{k} {v}" for k, v in {k: len(s) for k, s in splits.items()}.items()))
        out.append(Evaluation(name, ecfg, splits, files))
    return out


def eval_file(ev: Evaluation) -> str:
    """The per-sample results file an evaluator writes (TOFU_EVAL.json, MUSE_EVAL.json, LMEval_EVAL.json)."""
    return {"MUSEEvaluator": "MUSE_EVAL.json", "LMEvalEvaluator": "LMEval_EVAL.json"}.get(str(ev.cfg.get("handler")), "TOFU_EVAL.json")


def headline(summary: dict[str, Any]) -> dict[str, Any]:
    """The headline values of a TOFU summary (keys of :data:`HEADLINE_KEYS` that are present)."""
    from obliviate.pipelines.llm_eval_bench import headline_keys

    out = {k: summary[k] for k in HEADLINE_KEYS if k in summary}
    return {**out, **{k: summary[k] for k in headline_keys(summary)}}  # MUSE / lm-eval keys


def eval_copy(model: nn.Module, dtype: str | None) -> nn.Module:
    """``model`` itself, or a copy in ``dtype`` (``eval.<name>.dtype``) when its weights are in another one.

    A copy, so that the weights a run goes on to save are never rounded.
    """
    if not dtype:
        return model
    import copy

    import torch

    names = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if str(dtype) not in names:
        raise ConfigError(f"eval dtype '{dtype}' is not one of {', '.join(names)} (or null: the model's own dtype)")
    if next(model.parameters()).dtype == names[str(dtype)]:
        return model
    return copy.deepcopy(model).to(names[str(dtype)])


def evaluate(model: nn.Module, tokenizer: Any, ev: Evaluation, out_dir: Path | None, *, retain_logs_path: Any = "config",
             generate: bool | None = None, write_eval: bool = True) -> dict[str, Any]:
    """Run one evaluator on ``model``; writes TOFU_EVAL.json / TOFU_SUMMARY.json into ``out_dir``.

    Args:
        model: The causal LM (train mode is restored afterwards).
        tokenizer: Its tokenizer.
        ev: The evaluator and its samples.
        out_dir: Where the files go (``None``: nothing is written).
        retain_logs_path: The retain model's TOFU_EVAL.json (or its dir); ``"config"`` uses
            ``eval.<name>.retain_logs_path``.
        generate: Override ``eval.<name>.generate`` (ROUGE).
        write_eval: Also write TOFU_EVAL.json (``False``: the summary only).

    Returns:
        ``{"summary": {...}, "results": {...}, "warnings": [...], "eval_time_s": ...}``;
        missing retain logs give ``forget_quality: None`` and a warning, never an error.
    """
    from obliviate.metrics.tofu import EVAL_FILE, SUMMARY_FILE, tofu_summary
    from obliviate.metrics.tofu_eval import evaluate_tofu

    c = ev.cfg
    logs = c.get("retain_logs_path") if retain_logs_path == "config" else retain_logs_path
    backend = _backend(c)
    if backend is not None:  # eval=muse / eval=lm_eval
        return backend.evaluate(model, tokenizer, ev, out_dir, retain_logs_path=logs, generate=generate, write_eval=write_eval)
    start = time.perf_counter()
    scored = eval_copy(model, c.get("dtype"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        results = evaluate_tofu(
            scored, tokenizer, ev.splits, batch_size=int(c.get("batch_size", 8)), max_new_tokens=int(c.get("max_new_tokens", 200)),
            generation_batch_size=int(c.get("generation_batch_size") or c.get("batch_size", 8)),
            generate=bool(c.get("generate", True) if generate is None else generate), mia_k=float(c.get("mia_k", 0.4)),
            retain_logs_path=logs, privleak_ref_auc=c.get("privleak_ref_auc", 0.5),
        )
    messages = list(dict.fromkeys(str(w.message) for w in caught if issubclass(w.category, UserWarning)))
    for msg in messages:
        log.warning("%s", msg)
    summary = tofu_summary(results)
    if out_dir is not None:
        out_dir = Path(out_dir)
        if write_eval:
            write_json_main(out_dir / EVAL_FILE, results)
        write_json_main(out_dir / SUMMARY_FILE, summary)
    return {"summary": summary, "results": results, "warnings": messages, "eval_time_s": time.perf_counter() - start}


def run_info(ev: Evaluation, out: dict[str, Any], retain_logs_path: Any = None) -> dict[str, Any]:
    """The metrics.json block of one evaluation (splits, counts, files, warnings, headline)."""
    c = ev.cfg
    return {"handler": c.get("handler"), "forget_split": c.get("forget_split"), "holdout_split": c.get("holdout_split"),
            "retain_logs_path": retain_logs_path if retain_logs_path is not None else c.get("retain_logs_path"),
            "n": ev.counts, "files": ev.files, "eval_time_s": out["eval_time_s"], "warnings": out["warnings"],
            "summary": headline(out["summary"])}


def rescore_with_retain(eval_dir: Path, retain_dir: Path, privleak_ref_auc: float | None = 0.5) -> dict[str, Any] | None:
    """Recompute forget_quality / privleak / model_utility of ``eval_dir`` against ``retain_dir``'s TOFU_EVAL.json.

    Used by ``obliviate train``: the target model is evaluated before the retain model exists.
    Returns the new summary (``None`` when a file is missing).
    """
    from obliviate.metrics.tofu import EVAL_FILE, retain_reference_results, save_tofu_results, tofu_summary

    mine, ref = Path(eval_dir) / EVAL_FILE, Path(retain_dir) / EVAL_FILE
    if not (mine.is_file() and ref.is_file()):
        from obliviate.pipelines.llm_eval_bench import MuseBackend

        return MuseBackend.rescore(Path(eval_dir), Path(retain_dir), privleak_ref_auc)  # eval=muse (None without its files)
    results = read_json(mine)
    base = {k: v for k, v in results.items() if k not in ("forget_quality", "privleak", "model_utility")}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = {**base, **retain_reference_results(base, read_json(ref), privleak_ref_auc)}
    save_tofu_results(results, eval_dir)
    return tofu_summary(results)


class TofuEvalCallback(TrainerCallback):
    """Evaluates during training: ``<out_dir>/step_<N>/TOFU_SUMMARY.json`` every ``every_steps``
    optimizer steps and/or at each epoch end (the global step names the directory).

    Args:
        evaluations: The prepared evaluators (their samples are reused at every evaluation).
        tokenizer: The model's tokenizer.
        out_dir: ``<run_dir>/eval``.
        every_steps: Evaluate every N steps (``None``/0: never).
        per_epoch: Evaluate at every epoch end.
        generate: ROUGE during training (``None``: the evaluator's setting).
    """

    HISTORY_FILE = "during_training.json"

    def __init__(self, evaluations: list[Evaluation], tokenizer: Any, out_dir: Path, every_steps: int | None = None,
                 per_epoch: bool = False, generate: bool | None = None) -> None:
        self.evaluations, self.tokenizer, self.out_dir = evaluations, tokenizer, Path(out_dir)
        self.every_steps, self.per_epoch, self.generate = int(every_steps or 0), bool(per_epoch), generate
        self.done: set[int] = set()
        self.history: list[dict[str, Any]] = []

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """A resumed run (``global_step > 0``) keeps the evaluations made up to its checkpoint.

        The history is also on disk (``<out_dir>/during_training.json``, rewritten after each
        evaluation); entries after the checkpoint's step are dropped: the resumed run redoes them.
        """
        path = self.out_dir / self.HISTORY_FILE
        step = int(state.global_step)
        if step <= 0 or not path.is_file():
            return
        kept = [e for e in read_json(path) if int(e["step"]) <= step]
        self.history = kept
        self.done = {int(e["step"]) for e in kept}

    def _run(self, state: Any, model: nn.Module | None) -> None:
        from obliviate.distributed import is_main_process

        step = int(state.global_step)
        if model is None or step in self.done or not is_main_process():
            return
        self.done.add(step)
        for ev in self.evaluations:
            out = evaluate(model, self.tokenizer, ev, self.out_dir / f"step_{step}", generate=self.generate, write_eval=False)
            entry = {"step": step, "epoch": state.epoch, "evaluator": ev.name, **headline(out["summary"])}
            self.history.append(entry)
            write_json_main(self.out_dir / self.HISTORY_FILE, self.history)
            log.info("eval at step %d: %s", step, ", ".join(f"{k}={v:.4g}" for k, v in entry.items() if isinstance(v, float)))

    def on_step_end(self, args: Any, state: Any, control: Any, model: nn.Module | None = None, **kwargs: Any) -> None:
        if self.every_steps and state.global_step % self.every_steps == 0:
            self._run(state, model)

    def on_epoch_end(self, args: Any, state: Any, control: Any, model: nn.Module | None = None, **kwargs: Any) -> None:
        if self.per_epoch:
            self._run(state, model)


def training_callbacks(cfg: DictConfig, evaluations: list[Evaluation], tokenizer: Any, run_dir: Path) -> list[TofuEvalCallback]:
    """The during-training evaluation callback from ``eval_during_training`` (``[]`` when off)."""
    node = cfg.get("eval_during_training") or {}
    every, per_epoch = node.get("every_steps"), bool(node.get("per_epoch"))
    if not (every or per_epoch):
        return []
    if every is not None and int(every) < 0:
        raise ConfigError(f"eval_during_training.every_steps must be a positive integer, got {every}")
    if not evaluations:
        raise ConfigError("eval_during_training needs an evaluator; add eval=tofu")
    return [TofuEvalCallback(evaluations, tokenizer, run_dir / "eval", every, per_epoch, node.get("generate"))]


# ----------------------------------------------------------------------------- obliviate eval
def run_eval(cfg: DictConfig, run_dir: Path, run: Any = None) -> dict[str, Any]:
    """``obliviate eval``: evaluate the configured model; writes TOFU_EVAL.json, TOFU_SUMMARY.json, metrics.json."""
    from obliviate.pipelines.llm_stages import load_model, text_data_paths

    if not selected_evaluators(cfg):
        raise ConfigError("no evaluator selected; add eval=tofu")
    paths = text_data_paths(cfg)
    model, tokenizer = load_model(cfg)
    evaluations = prepare_evaluations(cfg, tokenizer, paths)
    result: dict[str, Any] = {"track": "llm", "command": "eval", "status": "completed", "method": _source_method(cfg),
                              "model": plain(cfg.model.get("model_args")), "eval": {}}
    for ev in evaluations:
        if run is not None:
            run.data_files.update({f"eval.{ev.name}.{k}": v for k, v in ev.files.items()})
        out = evaluate(model, tokenizer, ev, run_dir)
        result["eval"][ev.name] = run_info(ev, out)
        result.setdefault("eval_files", []).append(str(run_dir / eval_file(ev)))
        result.update(headline(out["summary"]))
    write_json_main(run_dir / "metrics.json", result)
    return result


def _source_method(cfg: DictConfig) -> str | None:
    """The unlearning method of the evaluated model when it is an unlearn run's ``model/`` dir."""
    path = (cfg.model.get("model_args") or {}).get("pretrained_model_name_or_path")
    if not path or str(path).startswith("pkg:"):
        return None
    metrics = Path(str(path)).expanduser().parent / "metrics.json"
    try:
        method = read_json(metrics).get("method") if metrics.is_file() else None
    except (OSError, ValueError, AttributeError):
        return None
    return method if isinstance(method, str) else None


def eval_rows(res: dict[str, Any]) -> list[dict[str, Any]]:
    """Console rows (metric, value) of an eval result."""
    rows = []
    for name, info in res.get("eval", {}).items():
        if info["n"]:  # lm_eval: the harness counts its own documents
            rows.append({"metric": f"[{name}] samples", "value": ", ".join(f"{k} {v}" for k, v in info["n"].items())})
        rows += [{"metric": k, "value": v} for k, v in info["summary"].items()]
    return rows


EVAL_COLUMNS = [("metric", "metric"), ("value", "value")]
