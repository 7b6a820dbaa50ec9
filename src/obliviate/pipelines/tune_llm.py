"""The LLM track of ``obliviate tune``: the target model, the objective's splits, trials, validation.

The target model and tokenised data are loaded once per process; each trial unlearns a copy.
The objective's data are the TOFU evaluator's splits (``eval=tofu``, shipped in the tune
config): forget (answers, paraphrased and perturbed answers), retain, real authors, world facts
and the **holdout authors** (never in any training data). The holdout file is
``<holdout_split>_perturbed`` when that file exists in the data folder (then its paraphrased /
perturbed answers are scored too and the truth-ratio term is on), else ``<holdout_split>``
(TOFU's holdout files have questions and answers only); ``tune.holdout_name`` /
``tune.holdout_path`` choose another file. Trials score teacher-forced values only (no
generation); the validation runs ``obliviate unlearn ... eval=tofu`` with the retain model's
logs.
"""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from omegaconf import DictConfig, OmegaConf
from torch import nn

from obliviate.errors import ConfigError
from obliviate.io import atomic_write_json, read_json
from obliviate.metrics.retrain_free import (
    DEFAULT_TOLERANCE,
    llm_objective,
    retrain_llm_objective,
    teacher_forced_results,
    teacher_forced_utility,
)
from obliviate.pipelines import llm, llm_eval, llm_stages
from obliviate.pipelines.common import plain
from obliviate.pipelines.study import file_lock

log = logging.getLogger(__name__)




def _first_row(root: str, name: str) -> dict[str, Any] | None:
    """The first JSON row of ``<root>/<name>.json(l)`` (``None`` when there is no such local file)."""
    for ext in (".json", ".jsonl"):
        path = Path(str(root)).expanduser() / f"{name}{ext}"
        if path.is_file():
            with path.open(encoding="utf-8") as fh:
                for line in fh:
                    if line.strip():
                        row = json.loads(line)
                        return row if isinstance(row, dict) else None
    return None


def holdout_spec(cfg: DictConfig, ecfg: dict[str, Any]) -> dict[str, Any]:
    """The objective's holdout split spec (see the module docstring)."""
    t = cfg.tune
    root = str(t.get("holdout_path") or ecfg.get("data_path"))
    base = str(ecfg.get("holdout_split") or "holdout10")
    name = t.get("holdout_name")
    if name is None:
        name = f"{base}_perturbed" if _first_row(root, f"{base}_perturbed") is not None else base
    spec: dict[str, Any] = {"name": str(name), "answer_key": "answer", "path": root}
    row = _first_row(root, str(name))
    if row is not None and isinstance(row.get("paraphrased_answer"), str) and isinstance(row.get("perturbed_answer"), list):
        spec.update(paraphrased_key="paraphrased_answer", perturbed_key="perturbed_answer")
    return spec


#: Validation metrics copied into tune.json (in this order).
VALIDATION_KEYS = ("forget_quality", "model_utility", "forget_truth_ratio", "forget_Q_A_Prob", "forget_Q_A_ROUGE",
                   "retain_Q_A_Prob", "retain_Q_A_ROUGE", "privleak", "extraction_strength")


class LLMProblem:
    """Everything the LLM trials share (built once per process).

    Args:
        cfg: The preset-applied tune config.
        out_dir: The tune run dir.
        s: The tune settings.
    """

    def __init__(self, cfg: DictConfig, out_dir: Path, s: Any) -> None:
        from obliviate.engine.trainer import build_trainer

        self.cfg, self.out_dir, self.s = cfg, Path(out_dir), s
        self.seed = int(cfg.seed)
        self.tolerance = DEFAULT_TOLERANCE["llm"] if s.tolerance is None else s.tolerance
        evaluators = llm_eval.selected_evaluators(cfg)
        if not evaluators:
            raise ConfigError("obliviate tune on the LLM track needs the TOFU evaluator's splits; keep eval=tofu (the tune default)")
        self.eval_name, ecfg = next(iter(evaluators.items()))
        handler = str(cfg.trainer.handler)
        self.method_args = plain(cfg.trainer.get("method_args")) or {}
        trainer_cls, method = build_trainer(handler, self.method_args)
        owner: Any = method if method is not None else trainer_cls
        self.paths = llm_stages.text_data_paths(cfg)
        record = SimpleNamespace(data_files={})
        llm_stages.check_sources(cfg, self.paths, record)  # fails fast on bad names / folders; records the data files
        self._files: dict[str, str] = record.data_files
        self.model, self.tokenizer = llm_stages.load_model(cfg)
        self.forget = llm_stages.load_split(cfg, "forget", self.tokenizer, idk=bool(getattr(owner, "needs_idk", False)), paths=self.paths)
        if self.forget is None:
            raise ConfigError("data.forget is not set; e.g. data.forget=TOFU_QA_FORGET10")
        self.retain = llm_stages.load_split(cfg, "retain", self.tokenizer, paths=self.paths)
        if self.retain is None and getattr(owner, "needs_retain", True):
            raise ConfigError(f"method {handler} needs a retain set; e.g. data.retain=TOFU_QA_RETAIN90")
        llm_stages.check_forget_retain(self.forget, self.retain)
        self.collator = llm_stages.make_collator(cfg, self.tokenizer)
        spec = holdout_spec(cfg, ecfg)
        limit = cfg.tune.get("max_samples") or ecfg.get("max_samples")
        obj_cfg = {**ecfg, "_name": self.eval_name, "max_samples": limit, "splits": {**(ecfg.get("splits") or {}), "holdout": spec}}
        cache_dir = self.paths.get("cache_dir") if cfg.data.get("cache_tokenized", True) else None
        self.splits, self.files = llm_eval.load_eval_splits(obj_cfg, self.tokenizer, plain(cfg.model.get("template_args")) or {}, cache_dir)
        missing = [k for k in ("forget", "holdout", "retain", "ra", "wf") if k not in self.splits]
        if missing:
            raise ConfigError(f"the retrain-free objective needs the evaluator splits {', '.join(missing)} (eval.{self.eval_name}.splits)")
        self.holdout = {"file": self.files["holdout"], "perturbed": "perturbed_key" in spec, "n": len(self.splits["holdout"])}
        self.batch_size = int(ecfg.get("batch_size", 8))
        self.utility_target = self._target_utility()
        self._retain_tr: list[float] | None = None
        self._logs: str | None = None
        if s.objective == "retrain" or s.record_oracle:
            logs = self._retain_logs(train=False)
            if logs is None:
                raise ConfigError("tune.objective=retrain / tune.record_oracle need the retain model: pass retain_logs_path=... "
                                  "(its TOFU_EVAL.json) or retrain_checkpoint=RETAIN_MODEL_DIR")
            self._retain_tr = _forget_truth_ratios(read_json(logs))

    # ------------------------------------------------------------------ references
    def identity(self) -> dict[str, Any]:
        """What the study's trials depend on (a rerun with other data or model is refused)."""
        margs = plain(self.cfg.model.get("model_args")) or {}
        return {"model": str(self.cfg.get("original_checkpoint") or margs.get("pretrained_model_name_or_path")),
                "forget": plain(self.cfg.data.get("forget")), "retain": plain(self.cfg.data.get("retain")),
                "holdout": self.holdout, "n": {k: len(v) for k, v in self.splits.items()}, "seed": self.seed}

    def data_files(self) -> dict[str, str]:
        """Training and objective data files (hashed into the run manifest)."""
        return {**self._files, **{f"objective.{k}": v for k, v in self.files.items()}}

    def _target_utility(self) -> float:
        """Teacher-forced utility of the target model (cached in ``references/target_tf.json``)."""
        path = self.out_dir / "references" / "target_tf.json"
        key = json.dumps(self.identity(), sort_keys=True, default=str)
        with file_lock(self.out_dir / ".references.lock"):
            if path.is_file() and read_json(path).get("identity") == key:
                return float(read_json(path)["utility"])
            results = teacher_forced_results(self.model, self.tokenizer, self.splits, batch_size=self.batch_size)
            utility = teacher_forced_utility(results)
            atomic_write_json(path, {"identity": key, "utility": utility, "terms": llm_objective(results, utility, tolerance=self.tolerance)})
        log.info("target model: teacher-forced utility %.4f", utility)
        return utility

    def _retain_logs(self, train: bool) -> str | None:
        """The retain model's TOFU_EVAL.json: given, evaluated from ``retrain_checkpoint``, or
        (``train``) trained from the base model on ``data.retain`` under ``references/retain``."""
        if self._logs is not None:
            return self._logs
        given = self.cfg.get("retain_logs_path")
        if given:
            p = Path(str(given))
            self._logs = str(p / "TOFU_EVAL.json" if p.is_dir() else p)
            return self._logs
        ref = self.out_dir / "references"
        logs = ref / "retain_eval" / "TOFU_EVAL.json"
        with file_lock(self.out_dir / ".references.lock"):
            if not logs.is_file():
                model_dir = self.cfg.get("retrain_checkpoint")
                if not model_dir and (ref / "retain" / "config.json").is_file():
                    model_dir = str(ref / "retain")
                if not model_dir:
                    if not train:
                        return None
                    model_dir = self._train_retain(ref / "retain")
                cfg = copy.deepcopy(self.cfg)
                OmegaConf.update(cfg, "original_checkpoint", str(model_dir), force_add=True)
                model, tokenizer = llm_stages.load_model(cfg)
                for ev in llm_eval.prepare_evaluations(cfg, tokenizer, self.paths):
                    llm_eval.evaluate(model, tokenizer, ev, ref / "retain_eval", retain_logs_path=None)
                del model
        self._logs = str(logs)
        return self._logs

    def _train_retain(self, out: Path) -> str:
        """Fine-tune the base model (``model.model_args``) on ``data.retain`` with ``train.args``."""
        if not self.cfg.get("original_checkpoint"):
            raise ConfigError("tune.validate=true trains the retain model from the base model, but the model path is the target "
                              "itself: pass the base model as model.model_args.pretrained_model_name_or_path and the target as "
                              "original_checkpoint=..., or give retain_logs_path=... / retrain_checkpoint=...")
        cfg = copy.deepcopy(self.cfg)
        OmegaConf.update(cfg, "original_checkpoint", None, force_add=True)
        model, tokenizer = llm_stages.load_model(cfg)
        model = llm_stages.maybe_lora(model, cfg)
        retain = llm_stages.load_split(cfg, "retain", tokenizer, paths=self.paths)
        if retain is None:
            raise ConfigError("training the retain model needs data.retain")
        log.info("training the retain model on %d QA pairs for the validation", len(retain))
        llm.finetune(model, retain, llm_stages.make_collator(cfg, tokenizer), cfg.train.args, out.parent / "retain_trainer", self.seed)
        return llm_stages.save_model_dir(model, tokenizer, out, cfg)

    def reference_name(self) -> str:
        return str(self._logs)

    # ------------------------------------------------------------------ objective
    def evaluate(self, model: nn.Module) -> dict[str, Any]:
        """The objective's terms for ``model`` (teacher-forced values only)."""
        return self._terms(self._results(model))

    def _results(self, model: nn.Module) -> dict[str, Any]:
        return teacher_forced_results(model, self.tokenizer, self.splits, batch_size=self.batch_size)

    def _terms(self, results: dict[str, Any]) -> dict[str, Any]:
        if self.s.objective == "retrain":
            return retrain_llm_objective(self._fq(results), teacher_forced_utility(results), self.utility_target,
                                         tolerance=self.tolerance, weight=self.s.penalty_weight)
        return llm_objective(results, self.utility_target, tolerance=self.tolerance, weight=self.s.penalty_weight)

    def _fq(self, results: dict[str, Any]) -> float:
        from obliviate.metrics.tofu import forget_quality

        mine = [v["score"] for v in results["forget_truth_ratio"]["value_by_index"].values()]
        return forget_quality(mine, self._retain_tr)

    def oracle(self, results: dict[str, Any]) -> dict[str, Any]:
        """Forget quality against the retain model's forget truth ratios + teacher-forced utility."""
        utility = teacher_forced_utility(results)
        ratio = utility / self.utility_target if self.utility_target > 0 else None
        return {"forget_quality": self._fq(results), "utility": utility, "utility_ratio": ratio}

    # ------------------------------------------------------------------ trials
    def run_trial(self, cfg: DictConfig, trial_dir: Path, reporter: Any) -> dict[str, Any]:
        """Unlearn a copy of the target model with ``cfg``; returns ``{"terms", "oracle", "status"}``."""
        from obliviate.engine.guard import DivergenceGuard, make_guard_config
        from obliviate.pipelines.prune_llm import prepare_llm

        model = copy.deepcopy(self.model)
        model, _ = prepare_llm(cfg, model, self.forget, self.retain, self.collator)
        model = llm_stages.maybe_lora(model, cfg)
        guard = DivergenceGuard(make_guard_config(cfg.get("divergence")))
        # the same unlearning stage as `obliviate unlearn` (llm_stages.unlearn), without its bars
        model, _, step = llm_stages.unlearn(model, cfg, self.forget, self.retain, self.collator, trial_dir, self.seed,
                                            callbacks=[reporter], guard=guard, args_overrides={"disable_tqdm": True})
        model.eval()
        terms = None if guard.diverged else reporter.cached(step)
        results = self._results(model) if terms is None or self.s.record_oracle else None  # one pass serves both
        terms = terms if terms is not None else self._terms(results)
        oracle = self.oracle(results) if self.s.record_oracle else None
        del model
        return {"terms": terms, "oracle": oracle, "status": "diverged" if guard.diverged else "completed"}

    # ------------------------------------------------------------------ validation
    def validation_unavailable(self, mode: str) -> str | None:
        """Why no validation runs (``None``: it runs with the retain model's logs)."""
        if mode == "false":
            return "tune.validate=false"
        if self._retain_logs(train=mode == "true") is None:
            return "no retain model: pass retain_logs_path=... (its TOFU_EVAL.json), retrain_checkpoint=RETAIN_MODEL_DIR or tune.validate=true"
        return None

    def reference_objectives(self) -> dict[str, float]:
        """The objective of the target model (doing nothing) and, when its directory is known
        (``retrain_checkpoint`` or ``references/retain``), of the retain model (the gold standard)."""
        terms = read_json(self.out_dir / "references" / "target_tf.json").get("terms") or {}
        out = {"original": terms["objective"]} if "objective" in terms else {}
        retain_dir = self.cfg.get("retrain_checkpoint") or (self.out_dir / "references" / "retain")
        if (Path(str(retain_dir)) / "config.json").is_file() or (Path(str(retain_dir)) / "adapter_config.json").is_file():
            cfg = copy.deepcopy(self.cfg)
            OmegaConf.update(cfg, "original_checkpoint", str(retain_dir), force_add=True)
            model, _ = llm_stages.load_model(cfg)
            out["retrain"] = float(self.evaluate(model)["objective"])
            del model
        return out

    def validate(self, cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
        """``obliviate unlearn ... eval=tofu`` with the retain model's logs (generation included)."""
        cfg = copy.deepcopy(cfg)
        OmegaConf.update(cfg, "retain_logs_path", self._logs, force_add=True)
        OmegaConf.update(cfg, f"eval.{self.eval_name}.retain_logs_path", self._logs, force_add=True)
        run_dir.mkdir(parents=True, exist_ok=True)
        return llm.run_unlearning(cfg, run_dir)

    @staticmethod
    def validation_metrics(res: dict[str, Any]) -> dict[str, Any]:
        return {k: res.get(k) for k in VALIDATION_KEYS}


def _forget_truth_ratios(logs: dict[str, Any]) -> list[float]:
    by = (logs.get("forget_truth_ratio") or {}).get("value_by_index") or {}
    values = [v.get("score") for v in by.values() if isinstance(v, dict) and v.get("score") is not None]
    if not values:
        raise ConfigError("the retain model's TOFU_EVAL.json has no per-sample forget_truth_ratio")
    return values
