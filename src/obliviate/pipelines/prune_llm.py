"""LLM-track structured pruning: ``obliviate prune pruning=loraprune|unlearning_prune`` and the
``pruning=unlearning_prune`` transform of ``obliviate unlearn`` (:func:`prepare_llm`).

``pruning=loraprune`` (compression): LoRA fine-tuning on ``pruning.text_file`` (plain text
blocks), else ``data.full``, else forget + retain, with soft group masks, LoRA-gradient
importance (EMA) and the cubic schedule (:func:`~obliviate.pipelines.prune_train.train_loraprune`,
LoRAPrune's defaults), then LoRA merge, physical removal of the pruned heads/channels and
``save_pretrained`` to ``pruned/`` (per-layer widths zero-padded, see
:mod:`obliviate.pruning.physical_llm`). metrics.json holds the parameter count, latency
(median forward time of one fixed batch, same process) and training-data NLL before and after.

Every run's metrics.json also carries the uniform top-level keys ``params_before/after``,
``nonzero_params_before/after``, ``wall_time_s`` and, with a forget set (``data.forget``),
``forget_loss_before/after`` (+ ``retain_loss_before/after`` with ``data.retain``): mean
answer-token NLL on the forget/retain micro-batches (loraprune: up to ``pruning.eval_batches``
= 8 batches; unlearning_prune: the sensitivity batches, as in ``pruning.loss``).

``pruning=unlearning_prune``: dual-importance pruning on ``data.forget`` / ``data.retain``
(:func:`~obliviate.pipelines.prune_structured.dual_prune`) with the retain-NLL safeguard;
pruned groups are zeroed in the weights (reloadable, same shapes) and stay zero in later
training.
"""

from __future__ import annotations

import logging
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from obliviate.errors import ConfigError
from obliviate.io import atomic_write_json
from obliviate.pipelines.prune_structured import dual_prune, retain_batches_for, take_batches
from obliviate.pruning import param_counts

log = logging.getLogger(__name__)


def _opts(cfg: DictConfig) -> dict[str, Any]:
    node = cfg.get("pruning")
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node or {})


def lm_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean answer-token NLL of a collated batch (``labels`` -100 outside the answers)."""
    device = next(model.parameters()).device
    return model(**{k: batch[k].to(device) for k in ("input_ids", "attention_mask", "labels")}).loss


def n_params(model: nn.Module) -> int:
    """Number of parameters."""
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def latency_ms(model: nn.Module, batch: dict[str, torch.Tensor], repeats: int = 10) -> float:
    """Median forward time (ms) of ``batch`` over ``repeats`` passes after one warm-up pass."""
    model.eval()
    device = next(model.parameters()).device
    inputs = {k: batch[k].to(device) for k in ("input_ids", "attention_mask")}
    model(**inputs)
    times = []
    for _ in range(max(int(repeats), 1)):
        t0 = time.perf_counter()
        model(**inputs)
        times.append(1000.0 * (time.perf_counter() - t0))
    return float(statistics.median(times))


def _snapshot(model: nn.Module, batches: list, probe: dict, repeats: int) -> dict[str, float]:
    from obliviate.pipelines.prune_structured import mean_loss

    return {**param_counts(model), "latency_ms": latency_ms(model, probe, repeats), "train_nll": mean_loss(model, batches, lm_loss)}


def _load(cfg: DictConfig) -> tuple[nn.Module, Any, dict[str, Any], Any]:
    from obliviate.pipelines import llm_stages

    paths = llm_stages.text_data_paths(cfg)
    llm_stages.check_sources(cfg, paths)
    model, tokenizer = llm_stages.load_model(cfg)
    data = {k: llm_stages.load_split(cfg, k, tokenizer, paths=paths) for k in ("full", "forget", "retain")}
    return model, tokenizer, data, llm_stages.make_collator(cfg, tokenizer)


# ----------------------------------------------------------------------------- LoRAPrune
def _train_data(cfg: DictConfig, data: dict[str, Any], tokenizer: Any, opts: dict[str, Any]) -> Any:
    """``pruning.text_file`` (LM blocks), else ``data.full``, else ``data.forget`` + ``data.retain``."""
    if opts.get("text_file"):
        from obliviate.data.text.plain import TextFileDataset

        return TextFileDataset(opts["text_file"], tokenizer, int(opts.get("block_size", 256)), opts.get("max_blocks"), name="text_file")
    if data["full"] is not None:
        return data["full"]
    if data["forget"] is None or data["retain"] is None:
        raise ConfigError("pruning=loraprune needs training data: pruning.text_file=FILE, data.full, or data.forget + data.retain")
    from torch.utils.data import ConcatDataset

    return ConcatDataset([data["forget"], data["retain"]])


def _epochs(dataset: Any, collator: Any, bs: int, seed: int) -> Any:
    """Endless micro-batches: a new seeded shuffle every pass over the data."""
    epoch = 0
    while True:
        yield from take_batches(dataset, collator, bs, None, seed + epoch)
        epoch += 1


def save_pruned(model: nn.Module, tokenizer: Any, out_dir: Path) -> dict[str, Any]:
    """``save_pretrained`` the pruned model; per-layer widths are saved zero-padded (see
    :mod:`obliviate.pruning.physical_llm`). Returns ``{"padded": bool, "saved_params": int}``."""
    from obliviate.models.llm import save_causal_lm
    from obliviate.pruning.groups import discover_groups
    from obliviate.pruning.physical_llm import is_uniform, pad_to_uniform

    if is_uniform(discover_groups(model)):
        save_causal_lm(model, tokenizer, out_dir)
        return {"padded": False, "saved_params": n_params(model)}
    padded = pad_to_uniform(model)
    log.warning("layers differ in width: saved zero-padded to the widest layer (plain from_pretrained loads it at that "
                "size; obliviate's loader strips the padding)")
    save_causal_lm(padded, tokenizer, out_dir)
    return {"padded": True, "saved_params": n_params(padded)}


def run_loraprune(cfg: DictConfig, run_dir: Path, opts: dict[str, Any]) -> dict[str, Any]:
    """LoRAPrune compression of the configured causal LM (see module docstring)."""
    from obliviate.models.lora import apply_lora
    from obliviate.pipelines.prune_train import loraprune_config, train_loraprune
    from obliviate.pruning.groups import remove_pruned_groups

    seed = int(cfg.seed)
    model, tokenizer, data, collator = _load(cfg)
    train = _train_data(cfg, data, tokenizer, opts)
    bs, steps, repeats = int(opts.get("batch_size", 8)), int(opts.get("steps", 60)), int(opts.get("latency_repeats", 10))
    probe_batches = take_batches(train, collator, bs, int(opts.get("eval_batches", 8)), seed)
    probe = probe_batches[0]
    before = _snapshot(model, probe_batches, probe, repeats)
    fr_batches = _forget_retain_batches(data, collator, opts, seed)
    fr_before = _forget_retain_loss(model, fr_batches)
    pcfg = loraprune_config(opts, steps)
    torch.manual_seed(seed)  # LoRA A initialisation and dropout
    peft = apply_lora(model, r=int(opts.get("lora_r", 8)), alpha=float(opts.get("lora_alpha", 16)),
                      dropout=float(opts.get("lora_dropout") or 0.0), target_modules=opts.get("lora_target_modules") or None)
    if pcfg.prune_metric == "grad":
        for p in peft.parameters():
            p.requires_grad_(True)
    pruner, history, seconds = train_loraprune(peft, _epochs(train, collator, bs, seed), lm_loss, steps, opts, pcfg)
    pruned_groups = pruner.masks.pruned()
    model = peft.merge_and_unload()
    masks = pruner.masks.rebind(model)
    removal: dict[str, Any] = {"removed": False}
    if opts.get("remove", True):
        removal = {"removed": True, **remove_pruned_groups(model, masks, allow_nonuniform=True)}
    else:
        from obliviate.pipelines.prune_structured import bake_masks

        bake_masks(model, masks)
    model.eval()
    after = _snapshot(model, probe_batches, probe, repeats)
    fr_after = _forget_retain_loss(model, fr_batches)
    out_dir = run_dir / "pruned"
    saved = save_pruned(model, tokenizer, out_dir) if removal["removed"] else _save_plain(model, tokenizer, out_dir)
    n_groups = sum(int(v.numel()) for v in masks.keep.values())
    return {"track": "llm", "command": "prune", "status": "completed",
            "pruning": {**opts, "warmup_steps": pcfg.warmup_steps, "cooldown_steps": pcfg.cooldown_steps,
                        "pruned_groups": pruned_groups, "n_pruned": sum(len(v) for v in pruned_groups.values()),
                        "n_groups": n_groups, "group_sparsity": masks.sparsity(), "history": history, "seconds": seconds,
                        "protected_sets": sorted(pruner.protected), "skipped_importance_steps": pruner.tracker.skipped,
                        **{k: v for k, v in removal.items() if k != "per_layer"}, "kept_per_layer": removal.get("per_layer"), **saved},
            "original": before, "pruned": after,
            "ratios": {"params": after["params"] / before["params"], "latency": after["latency_ms"] / max(before["latency_ms"], 1e-9)},
            "n_train": len(train), "model_dir": str(out_dir),
            **{f"{k}_before": v for k, v in fr_before.items()}, **{f"{k}_after": v for k, v in fr_after.items()}}


def _save_plain(model: nn.Module, tokenizer: Any, out_dir: Path) -> dict[str, Any]:
    from obliviate.models.llm import save_causal_lm

    save_causal_lm(model, tokenizer, out_dir)
    return {"padded": False, "saved_params": n_params(model)}


def _forget_retain_batches(data: dict[str, Any], collator: Any, opts: dict[str, Any], seed: int) -> dict[str, list]:
    """Up to ``pruning.eval_batches`` (8) micro-batches of data.forget / data.retain (``{}`` without a forget set)."""
    if data.get("forget") is None:
        return {}
    bs, limit = int(opts.get("batch_size", 8)), int(opts.get("eval_batches", 8))
    out = {"forget": take_batches(data["forget"], collator, bs, limit, seed)}
    if data.get("retain") is not None:
        out["retain"] = take_batches(data["retain"], collator, bs, limit, seed + 1)
    return out


def _forget_retain_loss(model: nn.Module, batches: dict[str, list]) -> dict[str, float]:
    """``{"forget_loss", "retain_loss"}``: mean answer NLL on the batches of :func:`_forget_retain_batches`."""
    from obliviate.pipelines.prune_structured import mean_loss

    return {f"{k}_loss": mean_loss(model, b, lm_loss) for k, b in batches.items()}


# ----------------------------------------------------------------------------- unlearning mode
def _llm_parts(forget: Any, retain: Any, collator: Any, opts: dict[str, Any], seed: int, eval_batch_size: int) -> tuple[list, list, Any]:
    """Forget/retain micro-batches and the retain-NLL safeguard metric of the LLM track."""
    import numpy as np
    from torch.utils.data import Subset

    from obliviate.pipelines.llm_stages import answer_nll

    if retain is None:
        raise ConfigError("pruning=unlearning_prune needs a retain set (data.retain) for the retain sensitivity pass")
    bs = int(opts.get("batch_size", 8))
    fb = take_batches(forget, collator, bs, opts.get("max_forget_batches"), seed)
    rb = retain_batches_for(fb, retain, collator, bs, float(opts.get("forget_retain_ratio", 1.0)), seed)
    n = min(int(opts.get("retain_eval_samples", 256)), len(retain))
    probe = Subset(retain, np.random.default_rng(seed).choice(len(retain), n, replace=False).tolist())
    probe.tokenizer = retain.tokenizer  # answer_nll reads its pad token

    def retain_eval(m: nn.Module) -> float:
        vals = answer_nll(m, probe, eval_batch_size, desc="retain NLL (prune safeguard)")
        return float(sum(vals) / len(vals))

    return fb, rb, retain_eval


def llm_unlearning_prune(model: nn.Module, forget: Any, retain: Any, collator: Any, opts: dict[str, Any], seed: int,
                         eval_batch_size: int = 16) -> tuple[nn.Module, dict[str, Any]]:
    """Dual-importance pruning of a causal LM; the safeguard is the retain answer NLL (lower is better)."""
    fb, rb, retain_eval = _llm_parts(forget, retain, collator, opts, seed, eval_batch_size)
    model, record = dual_prune(model, fb, rb, lm_loss, opts, retain_eval, higher_is_better=False)
    record["retain_metric"]["name"] = "retain_nll"
    model.eval()
    return model, record


def interleave_callbacks(cfg: DictConfig, model: nn.Module, forget: Any, retain: Any, collator: Any,
                         record: dict[str, Any] | None) -> list[Any]:
    """``pruning.interleave_every=N``: a TrainerCallback pruning further every N unlearning steps (else ``[]``)."""
    opts = _opts(cfg)
    every = opts.get("interleave_every")
    if record is None or not every:
        return []
    from obliviate.pipelines.prune_interleave import InterleavedPruneCallback

    fb, rb, retain_eval = _llm_parts(forget, retain, collator, opts, int(cfg.seed), int(cfg.get("eval_batch_size", 16)))
    return [InterleavedPruneCallback(model, fb, rb, lm_loss, opts, record, retain_eval, higher_is_better=False)]


def prepare_llm(cfg: DictConfig, model: nn.Module, forget: Any, retain: Any, collator: Any) -> tuple[nn.Module, dict[str, Any] | None]:
    """``obliviate unlearn ... pruning=unlearning_prune``: prune before the method runs (no-op otherwise)."""
    opts = _opts(cfg)
    name = str(opts.get("name", "none")).lower()
    if name in ("none", "null", ""):
        return model, None
    if name != "unlearning_prune":
        raise ConfigError(f"pruning={name} is not available in 'obliviate unlearn' on the LLM track; use pruning=unlearning_prune")
    return llm_unlearning_prune(model, forget, retain, collator, opts, int(cfg.seed), int(cfg.get("eval_batch_size", 16)))


def run_prune_llm(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """The ``obliviate prune`` job on the LLM track; writes metrics.json and returns it."""
    from obliviate.models.llm import save_causal_lm

    opts = _opts(cfg)
    name = str(opts.get("name", "none")).lower()
    start = time.perf_counter()
    if name == "loraprune":
        result = run_loraprune(cfg, run_dir, opts)
        result["params_before"], result["params_after"] = result["original"]["params"], result["pruned"]["params"]
        if "nonzero_params" in result["pruned"]:
            result["nonzero_params_before"] = result["original"]["nonzero_params"]
            result["nonzero_params_after"] = result["pruned"]["nonzero_params"]
    elif name == "unlearning_prune":
        model, tokenizer, data, collator = _load(cfg)
        if data["forget"] is None:
            raise ConfigError("pruning=unlearning_prune needs data.forget (e.g. data.forget=TOFU_QA_FORGET10)")
        from obliviate.pipelines.llm_stages import check_forget_retain

        check_forget_retain(data["forget"], data["retain"])
        counts_before = param_counts(model)
        model, record = llm_unlearning_prune(model, data["forget"], data["retain"], collator, opts, int(cfg.seed),
                                             int(cfg.get("eval_batch_size", 16)))
        counts_after = param_counts(model)
        save_causal_lm(model, tokenizer, run_dir / "pruned")
        loss = record["loss"]  # mean answer NLL on the sensitivity micro-batches, before/after pruning
        result = {"track": "llm", "command": "prune", "status": "completed", "pruning": {**opts, **record},
                  "model_dir": str(run_dir / "pruned"),
                  **{f"{k}_before": v for k, v in counts_before.items()}, **{f"{k}_after": v for k, v in counts_after.items()},
                  **{f"{k}_loss_{when}": loss[when][k] for k in ("forget", "retain") for when in ("before", "after")}}
    else:
        raise ConfigError(f"obliviate prune on the LLM track supports pruning=loraprune or pruning=unlearning_prune, got '{name}'")
    result["wall_time_s"] = time.perf_counter() - start
    atomic_write_json(run_dir / "metrics.json", result)
    return result


def prune_summary(res: dict[str, Any]) -> str:
    """Human-readable summary of :func:`run_prune_llm`'s result."""
    p = res["pruning"]
    if p.get("method") == "unlearning_prune":
        lb, la = p["loss"]["before"], p["loss"]["after"]
        return (f"unlearning_prune: {p['n_pruned']}/{p['n_groups']} groups pruned\n"
                f"forget NLL {lb['forget']:.4f} -> {la['forget']:.4f}; retain NLL {lb['retain']:.4f} -> {la['retain']:.4f}")
    o, q = res["original"], res["pruned"]
    lines = [f"{'model':<10} {'params':>10} {'latency_ms':>11} {'train_nll':>10}"]
    lines += [f"{n:<10} {r['params']:>10d} {r['latency_ms']:>11.3f} {r['train_nll']:>10.4f}" for n, r in (("original", o), ("pruned", q))]
    return f"loraprune: {p['n_pruned']}/{p['n_groups']} groups pruned\n" + "\n".join(lines)


__all__ = ["interleave_callbacks", "latency_ms", "llm_unlearning_prune", "lm_loss", "prepare_llm", "prune_summary", "run_loraprune", "run_prune_llm"]
