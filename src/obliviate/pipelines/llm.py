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

import inspect
import logging
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.utils.data import DataLoader
from transformers import set_seed

from obliviate.data import ForgetRetainDataset, PairCollator, check_no_overlap, content_key
from obliviate.data.text import (
    DataCollatorForSupervisedDataset,
    QADataset,
    QAwithIdkDataset,
    build_text_dataset,
    resolve_dataset_spec,
    write_synthetic_tofu,
)
from obliviate.engine import SupervisedTrainer
from obliviate.engine.guard import DivergenceGuard, make_guard_config
from obliviate.engine.progress import progress_label
from obliviate.engine.trainer import build_trainer
from obliviate.errors import ConfigError, DataError
from obliviate.distributed import write_json_main as write_json
from obliviate.methods import METHODS
from obliviate.models.adapters import CausalLMAdapter
from obliviate.models.llm import load_causal_lm, save_causal_lm
from obliviate.pipelines import llm_eval
from obliviate.pipelines.common import latest_checkpoint, timer, training_arguments

log = logging.getLogger(__name__)

SPLITS = ("forget", "retain", "eval")


def _plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


# ----------------------------------------------------------------------------- model
def load_model(cfg: DictConfig) -> tuple[nn.Module, Any]:
    """The configured causal LM and tokenizer (``original_checkpoint`` replaces the model path)."""
    model_cfg = _plain(cfg.model)
    ckpt = cfg.get("original_checkpoint")
    if ckpt:
        margs = model_cfg.setdefault("model_args", {})
        targs = model_cfg.setdefault("tokenizer_args", {})
        if targs.get("pretrained_model_name_or_path") in (None, margs.get("pretrained_model_name_or_path")):
            targs["pretrained_model_name_or_path"] = str(ckpt)
        margs["pretrained_model_name_or_path"] = str(ckpt)
    set_seed(int(cfg.seed))
    return load_causal_lm(model_cfg)


def maybe_lora(model: nn.Module, cfg: DictConfig) -> nn.Module:
    """Wrap ``model`` with LoRA adapters when ``lora.enabled`` (only adapters then train)."""
    lora = cfg.get("lora")
    if not lora or not lora.get("enabled"):
        return model
    from obliviate.models.lora import apply_lora

    targets = list(lora.target_modules) if lora.get("target_modules") else None
    extra = list(lora.modules_to_save) if lora.get("modules_to_save") else None
    model = apply_lora(model, r=int(lora.r), alpha=float(lora.alpha), dropout=float(lora.get("dropout") or 0.0), target_modules=targets,
                       modules_to_save=extra)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log.info("LoRA r=%s on %s: %d trainable parameters", lora.r, targets or "all linear layers", trainable)
    return model


def save_model_dir(model: nn.Module, tokenizer: Any, out_dir: Path, cfg: DictConfig) -> str:
    """Save the model with ``save_pretrained``; returns the directory to load it from.

    With LoRA the adapters always go to ``<out_dir>_adapter`` (a loadable adapter dir: loading
    it applies and merges them); ``lora.merge`` also saves the merged model to ``out_dir``
    (the model is merged in place, so this is its last use).
    """
    from peft import PeftModel

    from obliviate.distributed import is_main_process

    if not is_main_process():  # rank 0 saves; the others only need the path
        lora = isinstance(model, PeftModel) and not (cfg.get("lora") or {}).get("merge", False)
        return str(out_dir.parent / f"{out_dir.name}_adapter") if lora else str(out_dir)
    if not isinstance(model, PeftModel):
        save_causal_lm(model, tokenizer, out_dir)
        return str(out_dir)
    adapter_dir = out_dir.parent / f"{out_dir.name}_adapter"
    save_causal_lm(model, tokenizer, adapter_dir, base_dir=out_dir.parent / f"{out_dir.name}_base")
    if not (cfg.get("lora") or {}).get("merge", False):
        return str(adapter_dir)
    save_causal_lm(model, tokenizer, out_dir, merge_lora=True)
    return str(out_dir)


# ----------------------------------------------------------------------------- data
def text_data_paths(cfg: DictConfig) -> dict[str, Any]:
    """``cfg.paths`` as a dict, after generating the synthetic data set when ``synthetic`` is set."""
    paths = _plain(cfg.paths)
    syn = cfg.get("synthetic")
    if syn:
        write_synthetic_tofu(paths["tofu"], **_plain(syn))
    return paths


def load_split(cfg: DictConfig, key: str, tokenizer: Any, *, idk: bool = False, paths: dict | None = None) -> QADataset | None:
    """Tokenised dataset named by ``cfg.data[key]`` (``None`` when unset).

    With ``idk`` the dataset is a :class:`QAwithIdkDataset` (each item carries ``"idk"``).
    """
    value = cfg.data.get(key)
    if value is None:
        return None
    paths = paths if paths is not None else text_data_paths(cfg)
    name, spec = resolve_dataset_spec(value, paths)
    cache_dir = paths.get("cache_dir") if cfg.data.get("cache_tokenized", True) else None
    template_args = _plain(cfg.model.get("template_args")) or {}
    if idk and spec["handler"] != "QAwithIdkDataset":
        args = dict(spec["args"])
        idk_path = cfg.data.get("idk") or f"{paths.get('tofu')}/idontknow.jsonl"
        return QAwithIdkDataset(**args, idk_path=idk_path, tokenizer=tokenizer, template_args=template_args, cache_dir=cache_dir, name=name)
    return build_text_dataset(name, spec, tokenizer, template_args, cache_dir)


def check_forget_retain(forget: QADataset, retain: QADataset | None) -> None:
    """Forget and retain must not share a QA pair (by content hash); names the first ones."""
    if retain is None:
        return

    def keys(ds: QADataset) -> list[str]:
        if hasattr(ds, "overlap_keys"):  # raw text (PretrainingDataset / CompletionDataset): documents
            return ds.overlap_keys()
        return [f"{r[ds.question_key][:60]!r} ({content_key({'question': r[ds.question_key], 'answer': r[ds.answer_key]})[:10]})" for r in ds.rows]

    check_no_overlap(keys(forget), keys(retain), what="document" if hasattr(forget, "overlap_keys") else "QA pair")


def make_collator(cfg: DictConfig, tokenizer: Any) -> DataCollatorForSupervisedDataset:
    """The configured collator (``collator=DataCollatorForSupervisedDataset``)."""
    from obliviate.data.text.pretraining import COLLATORS  # + DataCollatorForPretraining (raw text: every token trained)

    node = cfg.get("collator") or {}
    name = node.get("name", "DataCollatorForSupervisedDataset")
    if name not in COLLATORS:
        raise ConfigError(f"collator '{name}' is not available for the LLM track; use one of: {', '.join(COLLATORS)}")
    return COLLATORS[name](tokenizer, **(_plain(node.get("collator_args")) or {}))


# ----------------------------------------------------------------------------- measurements
@torch.no_grad()
def answer_nll(model: nn.Module, dataset: QADataset, batch_size: int = 16) -> list[float]:
    """Mean answer-token NLL of every sequence of ``dataset`` (one value per answer option)."""
    adapter = CausalLMAdapter()
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out: list[float] = []
    for batch in DataLoader(dataset, batch_size=batch_size, collate_fn=DataCollatorForSupervisedDataset(dataset.tokenizer)):
        lm = {k: batch[k].to(device) for k in ("input_ids", "attention_mask", "labels")}
        nll, _ = adapter.per_sample_nll(model, lm)  # [b]
        out.extend(nll.float().cpu().tolist())
    model.train(was_training)
    return out


def answer_probs(per_sample_nll: dict[str, list[float]]) -> dict[str, float]:
    """Mean answer probability per dataset: the mean over sequences of ``exp(-mean answer NLL)``."""
    import math

    return {k: float(sum(math.exp(-x) for x in v) / len(v)) for k, v in per_sample_nll.items() if v}


def measure(model: nn.Module, datasets: dict[str, QADataset | None], batch_size: int) -> tuple[dict[str, float], dict[str, list[float]]]:
    """Mean and per-sequence answer NLL on each named dataset."""
    means, per = {}, {}
    for name, ds in datasets.items():
        if ds is not None:
            per[name] = answer_nll(model, ds, batch_size)
            means[name] = float(sum(per[name]) / len(per[name]))
    return means, per


def _args(args_cfg: Any, out_dir: Path, seed: int, n_train: int | None = None):
    raw = dict(_plain(args_cfg) or {})
    if not torch.cuda.is_available():
        for flag in ("bf16", "fp16", "bf16_full_eval", "fp16_full_eval"):
            if raw.get(flag):
                log.info("no GPU: ignoring trainer args %s=true", flag)
                raw[flag] = False
        if str(raw.get("optim", "")).startswith("paged_"):
            log.info("no GPU: optim %s -> adamw_torch", raw["optim"])
            raw["optim"] = "adamw_torch"
    return training_arguments(raw, out_dir, seed, n_train)


def _data_info(ds: QADataset | None, value: Any) -> dict[str, Any] | None:
    if ds is None:
        return None
    return {"name": value if isinstance(value, str) else getattr(ds, "name", "inline"), "n": len(ds), "sha256_16": ds.content_hash()}


def check_sources(cfg: DictConfig, paths: dict[str, Any], run: Any = None) -> None:
    """Resolve every configured dataset before any model is loaded: bad names and missing
    local directories fail fast. Records the data files in the run manifest."""
    for key in ("forget", "retain", "eval", "full"):
        value = cfg.data.get(key)
        if value is None:
            continue
        name, spec = resolve_dataset_spec(value, paths)
        hf = spec["args"].get("hf_args") or {}
        if hf.get("data_files") is not None:  # raw-text corpora given as files (WMDP)
            if run is not None:
                run.data_files[key] = str(hf["data_files"])
            continue
        if "path" in hf and hf["path"] in (None, "", "None"):
            raise ConfigError(f"data.{key}={name} has no data path; set the paths.* key its config reads, e.g. paths.qa=DIR "
                              "(a folder with forget.jsonl and retain.jsonl) or paths.tofu=DIR")
        path = str(hf.get("path", ""))
        if path.startswith((".", "/", "~")) and not Path(path).expanduser().is_dir():
            where = ("paths.tofu=DIR (a folder of <split>.json files)" if spec["handler"].startswith("QA")
                     else "paths.muse=DIR (a folder in the hub's layout)")  # raw text: MUSE
            raise DataError(f"data directory '{path}' does not exist; pass {where} or a hub id")
        names = hf.get("name") if isinstance(hf.get("name"), (list, tuple)) else [hf.get("name", "")]
        for i, n in enumerate(names):
            file = next((Path(path).expanduser() / f"{n}{ext}" for ext in (".json", ".jsonl")
                         if (Path(path).expanduser() / f"{n}{ext}").is_file()), None)
            if run is not None:
                run.data_files[key if len(names) == 1 else f"{key}.{i}"] = str(file) if file is not None else f"{path}:{n}"


# ----------------------------------------------------------------------------- train
def finetune(model: nn.Module, dataset: QADataset, collator: Any, args_cfg: Any, out_dir: Path, seed: int, resume: bool = False) -> tuple[float, list[dict]]:
    """Supervised fine-tuning on the answer tokens of ``dataset`` (Trainer output in ``out_dir``).

    Returns:
        ``(seconds, log history)``.
    """
    args = _args(args_cfg, out_dir, seed, len(dataset))
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
    probes = {k: data[k] for k in SPLITS}
    result: dict[str, Any] = {"track": "llm", "command": "train", "status": "completed", "model": _plain(cfg.model.get("model_args")),
                              "data": {k: _data_info(data[k], cfg.data.get(k)) for k in ("full", *SPLITS)}, "stages": {}}
    initial_means, initial_per = measure(model, probes, bs)
    result["initial"] = {"nll": initial_means, "prob": answer_probs(initial_per)}
    for stage in stages:
        if stage != stages[0]:
            model, tokenizer = load_model(cfg)
        model = maybe_lora(model, cfg)
        train_ds = data["full" if stage == "target" else "retain"]
        log.info("training the %s model on %d QA pairs", stage, len(train_ds))
        with progress_label(f"train {stage}"):
            seconds, history = finetune(model, train_ds, collator, cfg.train.args, run_dir / "trainer" / stage, seed, bool(cfg.get("resume")))
        means, per = measure(model, probes, bs)
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
    method_args = _plain(cfg.trainer.get("method_args")) or {}
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
    probes = {"forget": forget, "retain": retain, "eval": evalset}
    before, per_before = measure(model, probes, bs)
    write_json(run_dir / "eval" / "nll_before.json", per_before)
    from obliviate.pipelines.prune_llm import prepare_llm

    model, pruning = prepare_llm(cfg, model, forget, retain, collator)  # pruning=unlearning_prune (else no-op)

    model = maybe_lora(model, cfg)
    prune_callbacks: list[Any] = []
    if pruning is not None:  # pruning.interleave_every=N: prune further during unlearning
        from obliviate.pipelines.prune_llm import interleave_callbacks

        prune_callbacks = interleave_callbacks(cfg, model, forget, retain, collator, pruning)
    guard = DivergenceGuard(make_guard_config(cfg.get("divergence")))
    adapter = CausalLMAdapter()
    with timer() as t, progress_label(f"unlearn {handler}"):
        if method is not None and getattr(method, "one_shot", False):
            takes_collate = "collate_fn" in inspect.signature(method.apply).parameters
            model = method.apply(model, forget, retain, adapter, seed, **({"collate_fn": collator} if takes_collate else {}))
            history: list[dict] = []
            if callbacks:
                log.warning("eval_during_training is ignored: %s is a one-shot method (no training steps)", handler)
        else:
            pairs = ForgetRetainDataset(forget, retain if getattr(owner, "needs_retain", True) else None,
                                        anchor=getattr(owner, "anchor", "forget"), seed=seed)
            args = _args(cfg.trainer.args, run_dir / "trainer", seed, len(pairs))
            extra = {"method": method} if method is not None else {"method_args": method_args}
            trainer = trainer_cls(model, args, adapter=adapter, train_dataset=pairs, data_collator=PairCollator(collator), guard=guard,
                                  callbacks=[*callbacks, *prune_callbacks], **extra)
            trainer.train(resume_from_checkpoint=latest_checkpoint(run_dir / "trainer") if cfg.get("resume") else None)
            history = trainer.state.log_history
            del trainer
            if guard.diverged:
                guard.restore(model)
                log.warning("run diverged (%s); restored the weights of step %s", guard.reason, guard.report()["restored_step"])
    model.eval()
    if pruning is not None:
        from obliviate.pruning import enforce_masks

        enforce_masks(model)  # pruned groups stay zero (merged adapters / one-shot methods)
    after, per_after = measure(model, probes, bs)
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
        "model": _plain(cfg.model.get("model_args")),
        "original_checkpoint": cfg.get("original_checkpoint"),
        "retrain_checkpoint": cfg.get("retrain_checkpoint"),
        "lora": _plain(cfg.get("lora")),
        "data": {k: _data_info(ds, cfg.data.get(k)) for k, ds in probes.items()},
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
