"""The stages of an LLM job, shared by every LLM pipeline (train, unlearn, eval, prune, tune).

load the model (:func:`load_model`, :func:`maybe_lora`) -> load and check the data
(:func:`text_data_paths`, :func:`check_sources`, :func:`load_split`, :func:`check_forget_retain`,
:func:`make_collator`) -> measure (:func:`probe_sets`, :func:`measure`, :func:`answer_nll`) ->
unlearn (:func:`unlearn`) -> save (:func:`save_model_dir`). :mod:`obliviate.pipelines.llm`,
:mod:`~obliviate.pipelines.llm_eval`, :mod:`~obliviate.pipelines.prune_llm` and
:mod:`~obliviate.pipelines.tune_llm` compose them; nothing here imports another pipeline, so
those pipelines never call back into each other.
"""


from __future__ import annotations

import inspect
import logging
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn
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
from obliviate.engine.guard import DivergenceGuard
from obliviate.engine.trainer import build_trainer
from obliviate.errors import ConfigError, DataError
from obliviate.models.adapters import CausalLMAdapter
from obliviate.models.llm import load_causal_lm, save_causal_lm
from obliviate.pipelines.common import latest_checkpoint, plain, training_arguments

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- model
def load_model(cfg: DictConfig) -> tuple[nn.Module, Any]:
    """The configured causal LM and tokenizer (``original_checkpoint`` replaces the model path)."""
    model_cfg = plain(cfg.model)
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

    A model sharded by FSDP (trained under ``accelerate launch --config_file
    accelerate/fsdp.yaml``) has its full state gathered on every rank first (a collective),
    then rank 0 writes that state.
    """
    from peft import PeftModel

    from obliviate.distributed import full_state_dict, is_main_process

    state = full_state_dict(model)  # every rank, before rank 0 alone goes on: None unless sharded
    if not is_main_process():  # rank 0 saves; the others only need the path
        lora = isinstance(model, PeftModel) and not (cfg.get("lora") or {}).get("merge", False)
        return str(out_dir.parent / f"{out_dir.name}_adapter") if lora else str(out_dir)
    if not isinstance(model, PeftModel):
        save_causal_lm(model, tokenizer, out_dir, state_dict=state)
        return str(out_dir)
    adapter_dir = out_dir.parent / f"{out_dir.name}_adapter"
    save_causal_lm(model, tokenizer, adapter_dir, base_dir=out_dir.parent / f"{out_dir.name}_base", state_dict=state)
    if not (cfg.get("lora") or {}).get("merge", False):
        return str(adapter_dir)
    save_causal_lm(model, tokenizer, out_dir, merge_lora=True, state_dict=state)
    return str(out_dir)


# ----------------------------------------------------------------------------- data
def text_data_paths(cfg: DictConfig) -> dict[str, Any]:
    """``cfg.paths`` as a dict, after generating the synthetic data set when ``synthetic`` is set."""
    paths = plain(cfg.paths)
    syn = cfg.get("synthetic")
    if syn:
        write_synthetic_tofu(paths["tofu"], **plain(syn))
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
    template_args = plain(cfg.model.get("template_args")) or {}
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
    return COLLATORS[name](tokenizer, **(plain(node.get("collator_args")) or {}))


# ----------------------------------------------------------------------------- measurements
@torch.no_grad()
def answer_nll(model: nn.Module, dataset: QADataset, batch_size: int = 16, desc: str = "answer NLL") -> list[float]:
    """Mean answer-token NLL of every sequence of ``dataset`` (one value per answer option).

    One teacher-forced pass per row through :class:`~obliviate.metrics.runner.ForwardRunner`
    (rows sorted by length, the answer options of a row packed after their shared prompt, the
    LM head only at answer positions), with a progress bar labelled ``desc``.
    """
    from obliviate.metrics.runner import ForwardRunner

    groups = []
    for i in range(len(dataset)):
        item = dataset[i]
        options = item if isinstance(item, list) else [item]
        groups.append([{"input_ids": o["input_ids"].tolist(), "labels": o["labels"].tolist()} for o in options])
    pad = getattr(dataset.tokenizer, "pad_token_id", None)
    runner = ForwardRunner(model, batch_size=batch_size, pad_token_id=0 if pad is None else int(pad))
    was_training = model.training
    model.eval()
    try:
        records = runner.score(groups, needs={}, desc=desc)
    finally:
        model.train(was_training)
    return [-float(r.logp.mean()) if r.logp.size else 0.0 for group in records for r in group]


def answer_probs(per_sample_nll: dict[str, list[float]]) -> dict[str, float]:
    """Mean answer probability per dataset: the mean over sequences of ``exp(-mean answer NLL)``."""
    import math

    return {k: float(sum(math.exp(-x) for x in v) / len(v)) for k, v in per_sample_nll.items() if v}


def probe_sets(datasets: dict[str, QADataset | None], limit: int | None, seed: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """At most ``limit`` rows of each dataset for the before/after NLL probes (seeded sample).

    The same rows are measured before and after unlearning, so the deltas compare like with
    like; ``limit=None`` (``probe_samples=null``) keeps every row.

    Returns:
        ``(datasets, info)`` with ``info[name] = {"n": rows probed, "of": rows in the set, "indices": [...] | None}``.
    """
    import numpy as np
    from torch.utils.data import Subset

    if limit is not None and int(limit) < 1:
        raise ConfigError(f"probe_samples must be a positive number of rows or null (all), got {limit}")
    out: dict[str, Any] = {}
    info: dict[str, Any] = {}
    for name, ds in datasets.items():
        if ds is None:
            out[name] = None
            continue
        n = len(ds)
        if limit is None or n <= int(limit):
            out[name], info[name] = ds, {"n": n, "of": n, "indices": None}
            continue
        idx = sorted(np.random.default_rng(seed).choice(n, int(limit), replace=False).tolist())
        sub = Subset(ds, idx)
        sub.tokenizer = ds.tokenizer  # answer_nll reads its pad token
        out[name], info[name] = sub, {"n": len(idx), "of": n, "indices": idx}
    return out, info


def measure(model: nn.Module, datasets: dict[str, QADataset | None], batch_size: int,
            when: str = "") -> tuple[dict[str, float], dict[str, list[float]]]:
    """Mean and per-sequence answer NLL on each named dataset (``when`` labels the progress bars)."""
    means, per = {}, {}
    for name, ds in datasets.items():
        if ds is not None:
            per[name] = answer_nll(model, ds, batch_size, desc=f"NLL probe {name}" + (f" ({when})" if when else ""))
            means[name] = float(sum(per[name]) / len(per[name]))
    return means, per


def _probe_limit(cfg: DictConfig) -> int | None:
    value = cfg.get("probe_samples", 256)
    return None if value is None else int(value)


def probe_summary(info: dict[str, Any]) -> dict[str, Any]:
    """metrics.json block: rows probed of rows in the set, per split (the sampled indices go to eval/)."""
    return {name: {"n": v["n"], "of": v["of"], "sampled": v["indices"] is not None} for name, v in info.items()}


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


def unlearn(model: nn.Module, cfg: DictConfig, forget: QADataset, retain: QADataset | None, collator: Any, out_dir: Path, seed: int,
            *, callbacks: list[Any] | None = None, guard: DivergenceGuard | None = None, resume: bool = False,
            args_overrides: dict[str, Any] | None = None) -> tuple[nn.Module, list[dict], int]:
    """The unlearning stage: run ``cfg.trainer`` (a registered method) on ``model``.

    A one-shot method applies itself; any other trains on the paired forget / retain sets
    (``out_dir/trainer`` holds its checkpoints; ``resume`` continues the latest). With a
    ``guard`` a diverged run gets the weights of its last healthy step back.

    Returns:
        ``(model, log history, optimizer steps taken)``.
    """
    handler = str(cfg.trainer.handler)
    method_args = plain(cfg.trainer.get("method_args")) or {}
    trainer_cls, method = build_trainer(handler, method_args)
    owner: Any = method if method is not None else trainer_cls
    adapter = CausalLMAdapter()
    if method is not None and getattr(method, "one_shot", False):
        takes_collate = "collate_fn" in inspect.signature(method.apply).parameters
        model = method.apply(model, forget, retain, adapter, seed, **({"collate_fn": collator} if takes_collate else {}))
        if callbacks:
            log.warning("training callbacks (eval_during_training, interleaved pruning) are ignored: %s is a one-shot method "
                        "(no training steps)", handler)
        return model, [], 0
    pairs = ForgetRetainDataset(forget, retain if getattr(owner, "needs_retain", True) else None,
                                anchor=getattr(owner, "anchor", "forget"), seed=seed)
    args_cfg: Any = cfg.trainer.args if not args_overrides else {**(plain(cfg.trainer.args) or {}), **args_overrides}
    args = training_arguments(args_cfg, out_dir / "trainer", seed, len(pairs))  # CPU fallbacks (bf16, paged optim) logged there
    extra = {"method": method} if method is not None else {"method_args": method_args}
    trainer = trainer_cls(model, args, adapter=adapter, train_dataset=pairs, data_collator=PairCollator(collator), guard=guard,
                          callbacks=list(callbacks or []), **extra)
    trainer.train(resume_from_checkpoint=latest_checkpoint(out_dir / "trainer") if resume else None)
    history, steps = trainer.state.log_history, int(trainer.state.global_step)
    del trainer
    if guard is not None and guard.diverged:
        guard.restore(model)
        log.warning("run diverged (%s); restored the weights of step %s", guard.reason, guard.report()["restored_step"])
    return model, history, steps
