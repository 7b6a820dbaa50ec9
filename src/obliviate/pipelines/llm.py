"""LLM jobs behind ``obliviate train|unlearn`` for models with ``track: llm``.

``train`` fine-tunes the configured causal LM on ``data.full`` (the *target* model, the one
to unlearn) and on ``data.retain`` (the *retain* model, the gold standard that never saw the
forget set). ``unlearn`` pairs the tokenised forget and retain sets, runs the registered
method through :class:`~obliviate.engine.UnlearningTrainer`, saves the model (or its LoRA
adapters) and writes ``metrics.json`` with the training log and the mean answer NLL of the
forget / retain / eval sets before and after. With ``eval=tofu`` both commands also write the
TOFU metrics (:mod:`obliviate.pipelines.llm_eval`): ``train`` per stage into
``eval/<stage>/``, ``unlearn`` into the run dir (and ``eval/step_<N>/`` during unlearning).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig
from torch import nn

from obliviate.data.text import (
    QADataset,
)
from obliviate.distributed import write_json_main as write_json
from obliviate.engine import SupervisedTrainer
from obliviate.engine.guard import DivergenceGuard, make_guard_config
from obliviate.engine.progress import progress_label
from obliviate.engine.trainer import build_trainer
from obliviate.errors import ConfigError
from obliviate.methods import METHODS
from obliviate.models.adapters import CausalLMAdapter
from obliviate.pipelines import llm_eval
from obliviate.pipelines.common import latest_checkpoint, plain, timer, training_arguments
from obliviate.pipelines.llm_stages import (  # noqa: F401  (the stages are this module's API too)
    _data_info,
    _probe_limit,
    answer_nll,
    answer_probs,
    check_forget_retain,
    check_sources,
    load_model,
    load_split,
    make_collator,
    maybe_lora,
    measure,
    probe_sets,
    probe_summary,
    save_model_dir,
    text_data_paths,
    unlearn,
)

log = logging.getLogger(__name__)

SPLITS = ("forget", "retain", "eval")


# ----------------------------------------------------------------------------- train
def finetune(model: nn.Module, dataset: QADataset, collator: Any, args_cfg: Any, out_dir: Path, seed: int, resume: bool = False) -> tuple[float, list[dict]]:
    """Supervised fine-tuning on the answer tokens of ``dataset`` (Trainer output in ``out_dir``).

    Returns:
        ``(seconds, log history)``.
    """
    args = training_arguments(args_cfg, out_dir, seed, len(dataset))
    trainer = SupervisedTrainer(model, args, CausalLMAdapter(), train_dataset=dataset, data_collator=collator)
    with timer() as t:
        trainer.train(resume_from_checkpoint=latest_checkpoint(out_dir) if resume else None)
    model.eval()
    return t["s"], trainer.state.log_history


def run_train(cfg: DictConfig, run_dir: Path, run: Any = None) -> dict[str, Any]:
    """Fine-tune the target model (``data.full``) and the retain model (``data.retain``).

    Writes ``run_dir/{target,retain}/`` (``save_pretrained``) and ``metrics.json``.
    """
    seed = int(cfg.seed)
    stages = list(cfg.train.get("stages") or ("target", "retain"))
    unknown = [s for s in stages if s not in ("target", "retain")]
    if unknown:
        raise ConfigError(f"train.stages may hold 'target' and 'retain', got {unknown}")
    paths = text_data_paths(cfg)
    check_sources(cfg, paths, run)
    model, tokenizer = load_model(cfg)
    data = {k: load_split(cfg, k, tokenizer, paths=paths) for k in ("full", *SPLITS)}
    if data["forget"] is not None:
        check_forget_retain(data["forget"], data["retain"])
    for stage, key in (("target", "full"), ("retain", "retain")):
        if stage in stages and data[key] is None:
            raise ConfigError(f"train stage '{stage}' needs data.{key}")
    collator = make_collator(cfg, tokenizer)
    evaluations = llm_eval.prepare_evaluations(cfg, tokenizer, paths)
    bs = int(cfg.get("eval_batch_size", 16))
    probes, probe_info = probe_sets({k: data[k] for k in SPLITS}, _probe_limit(cfg), seed)
    write_json(run_dir / "eval" / "probe_indices.json", {k: v["indices"] for k, v in probe_info.items()})
    result: dict[str, Any] = {"track": "llm", "command": "train", "status": "completed", "model": plain(cfg.model.get("model_args")),
                              "data": {k: _data_info(data[k], cfg.data.get(k)) for k in ("full", *SPLITS)},
                              "probes": probe_summary(probe_info), "stages": {}}
    initial_means, initial_per = measure(model, probes, bs, "initial")
    result["initial"] = {"nll": initial_means, "prob": answer_probs(initial_per)}
    for stage in stages:
        if stage != stages[0]:
            model, tokenizer = load_model(cfg)
        model = maybe_lora(model, cfg)
        train_ds = data["full" if stage == "target" else "retain"]
        log.info("training the %s model on %d QA pairs", stage, len(train_ds))
        with progress_label(f"train {stage}"):
            seconds, history = finetune(model, train_ds, collator, cfg.train.args, run_dir / "trainer" / stage, seed, bool(cfg.get("resume")))
        means, per = measure(model, probes, bs, stage)
        # eval=tofu: eval/<stage>/TOFU_EVAL.json (the retain model's is the retain_logs_path of forget quality)
        tofu = {ev.name: llm_eval.run_info(ev, llm_eval.evaluate(model, tokenizer, ev, run_dir / "eval" / stage)) for ev in evaluations}
        out_dir = save_model_dir(model, tokenizer, run_dir / stage, cfg)
        write_json(run_dir / "eval" / f"{stage}_nll.json", per)
        result["stages"][stage] = {"dir": out_dir, "train_time_s": seconds, "n_train": len(train_ds), "nll": means,
                                   "prob": answer_probs(per), "log_history": history}
        if evaluations:
            result["stages"][stage]["eval"] = tofu
        del model
    if evaluations and {"target", "retain"} <= set(stages) and not cfg.get("retain_logs_path"):
        summary = llm_eval.rescore_with_retain(run_dir / "eval" / "target", run_dir / "eval" / "retain")
        if summary is not None:  # the target model scored against the retain model trained after it
            info = result["stages"]["target"]["eval"][evaluations[0].name]
            info["summary"] = llm_eval.headline(summary)
            info["warnings"] = [w for w in info["warnings"] if "forget_quality" not in w and "privleak" not in w]
            info["retain_logs_path"] = str(run_dir / "eval" / "retain" / llm_eval.eval_file(evaluations[0]))
    write_json(run_dir / "metrics.json", result)
    return result


# ----------------------------------------------------------------------------- unlearn
def run_unlearning(cfg: DictConfig, run_dir: Path, run: Any = None) -> dict[str, Any]:
    """Unlearn ``data.forget`` from the configured model; writes the model and ``metrics.json``."""
    seed = int(cfg.seed)
    handler = str(cfg.trainer.handler)
    tracks = METHODS.meta(handler).get("tracks")
    if tracks is not None and "llm" not in tracks:
        raise ConfigError(f"method {handler} is not available for the LLM track; LLM methods: {', '.join(METHODS.names(tracks='llm'))}")
    method_args = plain(cfg.trainer.get("method_args")) or {}
    trainer_cls, method = build_trainer(handler, method_args)
    owner: Any = method if method is not None else trainer_cls
    paths = text_data_paths(cfg)
    check_sources(cfg, paths, run)
    model, tokenizer = load_model(cfg)
    forget = load_split(cfg, "forget", tokenizer, idk=bool(getattr(owner, "needs_idk", False)), paths=paths)
    if forget is None:
        raise ConfigError("data.forget is not set; e.g. data.forget=TOFU_QA_FORGET10")
    retain = load_split(cfg, "retain", tokenizer, paths=paths)
    if retain is None and getattr(owner, "needs_retain", True):
        raise ConfigError(f"method {handler} needs a retain set; e.g. data.retain=TOFU_QA_RETAIN90")
    evalset = load_split(cfg, "eval", tokenizer, paths=paths)
    check_forget_retain(forget, retain)
    collator = make_collator(cfg, tokenizer)
    evaluations = llm_eval.prepare_evaluations(cfg, tokenizer, paths)  # eval=tofu
    callbacks = llm_eval.training_callbacks(cfg, evaluations, tokenizer, run_dir)  # eval_during_training
    if run is not None:
        run.data_files.update({f"eval.{ev.name}.{k}": v for ev in evaluations for k, v in ev.files.items()})
    bs = int(cfg.get("eval_batch_size", 16))
    datasets = {"forget": forget, "retain": retain, "eval": evalset}
    probes, probe_info = probe_sets(datasets, _probe_limit(cfg), seed)  # probe_samples rows per split (seeded)
    write_json(run_dir / "eval" / "probe_indices.json", {k: v["indices"] for k, v in probe_info.items()})
    before, per_before = measure(model, probes, bs, "before")
    write_json(run_dir / "eval" / "nll_before.json", per_before)
    from obliviate.pipelines.prune_llm import prepare_llm

    model, pruning = prepare_llm(cfg, model, forget, retain, collator)  # pruning=unlearning_prune (else no-op)

    model = maybe_lora(model, cfg)
    prune_callbacks: list[Any] = []
    if pruning is not None:  # pruning.interleave_every=N: prune further during unlearning
        from obliviate.pipelines.prune_llm import interleave_callbacks

        prune_callbacks = interleave_callbacks(cfg, model, forget, retain, collator, pruning)
    guard = DivergenceGuard(make_guard_config(cfg.get("divergence")))
    with timer() as t, progress_label(f"unlearn {handler}"):
        model, history, _ = unlearn(model, cfg, forget, retain, collator, run_dir, seed, callbacks=[*callbacks, *prune_callbacks],
                                    guard=guard, resume=bool(cfg.get("resume")))
    model.eval()
    if pruning is not None:
        from obliviate.pruning import enforce_masks

        enforce_masks(model)  # pruned groups stay zero (merged adapters / one-shot methods)
    after, per_after = measure(model, probes, bs, "after")
    write_json(run_dir / "eval" / "nll_after.json", per_after)
    tofu = {ev.name: llm_eval.evaluate(model, tokenizer, ev, run_dir) for ev in evaluations}  # TOFU_EVAL.json in the run dir
    model_dir = save_model_dir(model, tokenizer, run_dir / "model", cfg)
    result: dict[str, Any] = {
        "track": "llm",
        "command": "unlearn",
        "status": "diverged" if guard.diverged else "completed",
        "divergence": guard.report(),
        "method": handler,
        "method_args": method_args,
        "model": plain(cfg.model.get("model_args")),
        "original_checkpoint": cfg.get("original_checkpoint"),
        "retrain_checkpoint": cfg.get("retrain_checkpoint"),
        "lora": plain(cfg.get("lora")),
        "data": {k: _data_info(ds, cfg.data.get(k)) for k, ds in datasets.items()},
        # the NLL probes: rows measured (a seeded sample of probe_samples rows) of rows in each set
        "probes": probe_summary(probe_info),
        "nll": {"before": before, "after": after, "delta": {k: after[k] - before[k] for k in after}},
        # mean answer probability exp(-NLL) of the forget / retain / eval sets (obliviate report / compare)
        "prob": {"before": answer_probs(per_before), "after": answer_probs(per_after)},
        # mean answer NLL of the forget / retain sets at the start and end of unlearning
        **{f"{k}_loss_{when}": nll.get(k) for k in ("forget", "retain") for when, nll in (("start", before), ("end", after))},
        "unlearn_time_s": t["s"],
        "model_dir": model_dir,
        "log_history": history,
    }
    if pruning is not None:
        result["pruning"] = pruning
    if evaluations:
        result["eval"] = {ev.name: llm_eval.run_info(ev, tofu[ev.name]) for ev in evaluations}
        result.update(llm_eval.headline(tofu[evaluations[0].name]["summary"]))
    if callbacks:
        result["eval_during_training"] = callbacks[0].history
    write_json(run_dir / "metrics.json", result)
    return result


NLL_COLUMNS = [("model", "model"), ("forget", "forget NLL"), ("retain", "retain NLL"), ("eval", "eval NLL"), ("time_s", "time (s)")]


def train_rows(res: dict[str, Any]) -> list[dict[str, Any]]:
    """Table rows of a train result (initial model, then each trained stage)."""
    rows = [{"model": "initial", **res["initial"]["nll"]}]
    rows += [{"model": stage, **info["nll"], "time_s": info["train_time_s"]} for stage, info in res["stages"].items()]
    return rows


def unlearn_rows(res: dict[str, Any]) -> list[dict[str, Any]]:
    """Table rows of an unlearn result (before, after)."""
    return [{"model": "before", **res["nll"]["before"]}, {"model": f"after {res['method']}", **res["nll"]["after"], "time_s": res["unlearn_time_s"]}]
