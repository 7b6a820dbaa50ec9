"""MUSE and lm-evaluation-harness (WMDP, MMLU) evaluators for ``obliviate eval|train|unlearn``.

The ``eval`` config group selects them like TOFU's: ``eval=muse`` (``MUSEEvaluator``,
``configs/eval/muse.yaml``) and ``eval=lm_eval`` (``LMEvalEvaluator``,
``configs/eval/lm_eval.yaml``). :mod:`obliviate.pipelines.llm_eval` dispatches to the
backends here by handler name: ``load`` reads and tokenises the data before any training
(bad files fail fast), ``evaluate`` scores a model and writes the reference framework's
files (``MUSE_EVAL.json`` / ``MUSE_SUMMARY.json``, ``LMEval_EVAL.json`` / ``LMEval_SUMMARY.json``),
``rescore`` recomputes PrivLeak of a model evaluated before its retrained model existed.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from obliviate.distributed import write_json_main

log = logging.getLogger(__name__)


def _captured(fn: Callable[[], tuple[dict, dict]]) -> tuple[dict, dict, list[str], float]:
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        results, summary = fn()
    messages = list(dict.fromkeys(str(w.message) for w in caught if issubclass(w.category, UserWarning)))
    for msg in messages:
        log.warning("%s", msg)
    return results, summary, messages, time.perf_counter() - start


def _write(out_dir: Path | None, files: tuple[str, str], results: dict, summary: dict, write_eval: bool) -> None:
    if out_dir is None:
        return
    if write_eval:
        write_json_main(Path(out_dir) / files[0], results)
    write_json_main(Path(out_dir) / files[1], summary)


class MuseBackend:
    """``eval=muse``: VerbMem, KnowMem, PrivLeak, memorisation (:mod:`obliviate.metrics.muse`)."""

    @staticmethod
    def load(ecfg: dict[str, Any], tokenizer: Any, template_args: dict[str, Any] | None, cache_dir: str | None = None) -> tuple[dict, dict]:
        from obliviate.data.text.muse import load_muse_eval

        return load_muse_eval(ecfg, tokenizer, template_args)

    @staticmethod
    def evaluate(model: Any, tokenizer: Any, ev: Any, out_dir: Path | None, *, retain_logs_path: Any, generate: bool | None,
                 write_eval: bool) -> dict[str, Any]:
        from obliviate.metrics.muse import EVAL_FILE, SUMMARY_FILE, evaluate_muse, muse_summary

        c = ev.cfg

        def run() -> tuple[dict, dict]:
            results = evaluate_muse(
                model, tokenizer, ev.splits, batch_size=int(c.get("batch_size", 8)),
                verbmem_max_new_tokens=int((c.get("verbmem") or {}).get("max_new_tokens", 128)),
                knowmem_max_new_tokens=int((c.get("knowmem_forget") or c.get("knowmem_retain") or {}).get("max_new_tokens", 32)),
                stopwords=tuple(c.get("stopwords") or ()), generate=bool(c.get("generate", True) if generate is None else generate),
                mia_k=float(c.get("mia_k", 0.4)), privleak_attack=str(c.get("privleak_attack", "mia_min_k")),
                retain_logs_path=retain_logs_path, privleak_ref_auc=c.get("privleak_ref_auc", 0.5))
            return results, muse_summary(results)

        results, summary, messages, seconds = _captured(run)
        _write(out_dir, (EVAL_FILE, SUMMARY_FILE), results, summary, write_eval)
        return {"summary": summary, "results": results, "warnings": messages, "eval_time_s": seconds}

    @staticmethod
    def rescore(eval_dir: Path, retain_dir: Path, privleak_ref_auc: float | None = 0.5) -> dict[str, Any] | None:
        """PrivLeak of ``eval_dir``'s MUSE_EVAL.json against ``retain_dir``'s (``None`` when a file is missing)."""
        from obliviate.io import read_json
        from obliviate.metrics.muse import EVAL_FILE, SUMMARY_FILE, muse_summary, privleak_result

        mine, ref = Path(eval_dir) / EVAL_FILE, Path(retain_dir) / EVAL_FILE
        if not (mine.is_file() and ref.is_file()):
            return None
        results = read_json(mine)
        if "privleak" not in results:
            return None
        attack = results["privleak"].get("attack", "mia_min_k")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            results["privleak"] = privleak_result(results, read_json(ref), attack, privleak_ref_auc)
        summary = muse_summary(results)
        write_json_main(mine, results)
        write_json_main(Path(eval_dir) / SUMMARY_FILE, summary)
        return summary


class LMEvalBackend:
    """``eval=lm_eval``: lm-evaluation-harness tasks (``wmdp_cyber``, ``mmlu``, ...) on the in-memory model."""

    @staticmethod
    def load(ecfg: dict[str, Any], tokenizer: Any, template_args: dict[str, Any] | None, cache_dir: str | None = None) -> tuple[dict, dict]:
        from obliviate.metrics.lm_harness import _require_lm_eval

        _require_lm_eval()  # fail before any training when the dependency is missing
        local = {k: str(v) for k, v in (ecfg.get("local_data") or {}).items() if v}
        return {}, {f"local:{k}": v for k, v in local.items()}

    @staticmethod
    def evaluate(model: Any, tokenizer: Any, ev: Any, out_dir: Path | None, *, retain_logs_path: Any, generate: bool | None,
                 write_eval: bool) -> dict[str, Any]:
        import tempfile

        from obliviate.metrics.lm_harness import EVAL_FILE, SUMMARY_FILE, evaluate_lm_harness

        c = ev.cfg
        tasks = [t if isinstance(t, str) else str(t.get("task")) for t in (c.get("tasks") or [])]
        info: dict[str, Any] = {}

        def run() -> tuple[dict, dict]:
            with tempfile.TemporaryDirectory(prefix="obliviate_lm_eval_") as tmp:
                logs, summary, local = evaluate_lm_harness(
                    model, tokenizer, tasks, local_data=c.get("local_data") or {}, task_dirs=c.get("task_dirs"), work_dir=tmp,
                    batch_size=int((c.get("simple_evaluate_args") or {}).get("batch_size", c.get("batch_size", 16))),
                    limit=c.get("limit"), simple_evaluate_args={k: v for k, v in (c.get("simple_evaluate_args") or {}).items() if k != "batch_size"})
            info["local"] = local
            return logs, summary

        results, summary, messages, seconds = _captured(run)
        _write(out_dir, (EVAL_FILE, SUMMARY_FILE), results, summary, write_eval)
        return {"summary": summary, "results": results, "warnings": messages, "eval_time_s": seconds, "local_tasks": info.get("local", {})}

    @staticmethod
    def rescore(eval_dir: Path, retain_dir: Path, privleak_ref_auc: float | None = 0.5) -> dict[str, Any] | None:
        return None  # accuracies need no retrained model


BACKENDS: dict[str, type] = {"MUSEEvaluator": MuseBackend, "LMEvalEvaluator": LMEvalBackend}
#: metrics.json / console headline keys of these evaluators (summary keys), in display order.
HEADLINE_KEYS = ("forget_verbmem_ROUGE", "forget_knowmem_ROUGE", "retain_knowmem_ROUGE", "privleak", "extraction_strength",
                 "exact_memorization", "mia_min_k")


def headline_keys(summary: dict[str, Any]) -> list[str]:
    """Headline keys present in a MUSE / lm-eval summary (every ``<task>/acc`` of lm-eval)."""
    return [k for k in HEADLINE_KEYS if k in summary] + [k for k in summary if k.endswith(("/acc", "/acc_norm"))]
