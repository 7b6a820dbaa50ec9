"""Vision unlearning jobs: train original/retrained models, unlearn, evaluate, compare.

The functions here are the Python API behind ``obliviate train|unlearn|quickstart`` for the
vision track. Each takes plain objects (models, datasets, dicts), so they compose in
notebooks as well as in the CLI.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf
from torch import nn

from obliviate.checkpoint import load_model, save_model
from obliviate.data import ForgetRetainDataset, PairCollator, stack_collate
from obliviate.data.vision import TensorImageDataset, VisionData
from obliviate.distributed import full_state_dict, is_main_process
from obliviate.engine import SupervisedTrainer, build_trainer
from obliviate.engine.progress import progress_label
from obliviate.engine.guard import DivergenceGuard, make_guard_config
from obliviate.errors import ConfigError
from obliviate.io import atomic_write_json, read_json
from obliviate.methods import METHODS
from obliviate.metrics.classification import GAP_KEYS, accuracy, avg_gap, per_class_accuracy, test_accuracy
from obliviate.metrics.mia import mia_efficacy
from obliviate.models.adapters import ClassifierAdapter
from obliviate.pipelines.common import forget_selection, latest_checkpoint, timer, training_arguments
from obliviate.pipelines.prune import finalize_model, prepare_model, transform_report
from obliviate.pipelines.vision_stages import Split, build_model, load_data, predict, split_forget  # noqa: F401  (the API of this module too)

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- training
def train_classifier(model: nn.Module, dataset: TensorImageDataset, args_cfg: Any, out_dir: Path, seed: int, num_classes: int,
                     resume: bool = False) -> float:
    """Supervised training (original model on train, gold standard on retain). Returns seconds.

    With ``resume`` the latest ``out_dir/trainer/checkpoint-*`` (if any) is continued.
    """
    args = training_arguments(args_cfg, out_dir / "trainer", seed, len(dataset))
    trainer = SupervisedTrainer(model, args, ClassifierAdapter(num_classes), train_dataset=dataset, data_collator=stack_collate)
    with timer() as t:
        trainer.train(resume_from_checkpoint=latest_checkpoint(out_dir / "trainer") if resume else None)
    model.eval()
    return t["s"]


def unlearn(
    model: nn.Module, method_name: str, method_args: dict | None, split: Split, args_cfg: Any, out_dir: Path, seed: int, num_classes: int,
    *, resume: bool = False, guard: DivergenceGuard | None = None, callbacks: list[Any] | None = None,
    info: dict[str, Any] | None = None,
) -> tuple[nn.Module, float, list[dict]]:
    """Run one registered method on ``model`` (in place). Returns (model, seconds, log history).

    Args:
        resume: Continue from the latest ``out_dir/trainer/checkpoint-*`` (needs
            ``save_strategy`` steps/epoch in the trainer args).
        guard: Divergence guard; on divergence training stops and the last good weights
            are restored (see ``guard.report()``).
        callbacks: Extra ``TrainerCallback``s (e.g. ``obliviate tune``'s intermediate
            objective); ignored by one-shot methods.
        info: If given, filled with what the method reports about itself: ``warnings``
            (problems in effect, e.g. an update too small to matter) and ``method_stats``
            (e.g. what a one-shot method changed).
    """
    trainer_cls, method = build_trainer(method_name, method_args)
    spec = method if method is not None else trainer_cls  # declares needs_retain / anchor
    adapter = ClassifierAdapter(num_classes)
    forget = split.forget.with_augment(False)
    retain = split.retain
    with timer() as t, progress_label(f"unlearn {method_name}"):
        if getattr(method, "one_shot", False):
            model = method.apply(model, forget, retain, adapter, seed)  # type: ignore[union-attr]
            history: list[dict] = []
        else:
            pairs = ForgetRetainDataset(forget, retain if spec.needs_retain else None, anchor=spec.anchor, seed=seed,
                                        retain_fraction=getattr(spec, "retain_fraction", 1.0))
            args = training_arguments(args_cfg, out_dir / "trainer", seed, len(pairs))
            trainer = trainer_cls(model, args, method=method, adapter=adapter, train_dataset=pairs, data_collator=PairCollator(),
                                  guard=guard, callbacks=callbacks, **({"method_args": method_args} if method is None else {}))
            trainer.train(resume_from_checkpoint=latest_checkpoint(out_dir / "trainer") if resume else None)
            history = trainer.state.log_history
            if guard is not None and guard.diverged:
                guard.restore(model)
                log.warning("run diverged (%s); restored the weights of step %s", guard.reason, guard.report()["restored_step"])
    model.eval()
    if info is not None and method is not None:
        info["warnings"] = list(getattr(method, "warnings", []))
        info["method_stats"] = dict(getattr(method, "stats", {}) or {})
    return model, t["s"], history


# ----------------------------------------------------------------------------- evaluation
def evaluate(model: nn.Module, split: Split, test: TensorImageDataset, num_classes: int, seed: int = 0) -> tuple[dict[str, Any], dict[str, Any]]:
    """UA, RA, TA (+ forgotten-class TA), MIA-efficacy, per-class test accuracy.

    In class-wise forgetting the forgotten classes' test samples count neither in TA nor
    among the MIA's non-members (the reference removes them from its test set).

    Returns:
        ``(metrics, per_sample)``; ``per_sample`` maps forget/retain/test to index, label,
        prediction and true-class confidence lists (for ``eval/*.json``).
    """
    preds = {name: predict(model, ds) for name, ds in (("forget", split.forget), ("retain", split.retain), ("test", test))}
    ta, ta_forget = test_accuracy(preds["test"]["pred"], preds["test"]["label"], split.forget_classes)
    # Class-wise: the forgotten classes leave the test split too (TA and the MIA's non-members), as in the reference.
    non_members = ~np.isin(preds["test"]["label"], split.forget_classes)
    metrics: dict[str, Any] = {
        "UA": 100.0 - accuracy(preds["forget"]["pred"], preds["forget"]["label"]),
        "RA": accuracy(preds["retain"]["pred"], preds["retain"]["label"]),
        "TA": ta,
        "MIA": mia_efficacy(preds["retain"]["confidence"], preds["test"]["confidence"][non_members], preds["forget"]["confidence"], seed=seed),
        "forget_confidence": float(preds["forget"]["confidence"].mean()),
        "per_class_test_accuracy": per_class_accuracy(preds["test"]["pred"], preds["test"]["label"], num_classes),
    }
    if ta_forget is not None:
        metrics["TA_forget_class"] = ta_forget
    per_sample = {name: {k: v.tolist() for k, v in p.items() if k != "loss"} for name, p in preds.items()}
    return metrics, per_sample


def with_gap(metrics: dict[str, Any], retrain: dict[str, Any]) -> dict[str, Any]:
    """Add ``avg_gap`` against the retrained model's metrics."""
    return {**metrics, "avg_gap": avg_gap(metrics, retrain, GAP_KEYS)}


# ----------------------------------------------------------------------------- reference models
def obtain_reference_models(cfg: DictConfig, data: VisionData, split: Split, run_dir: Path, *, original: nn.Module | None = None,
                            original_time: float | None = None) -> dict[str, Any]:
    """Load or train the original (train split) and retrained (retain split) models.

    Checkpoints given as ``original_checkpoint`` / ``retrain_checkpoint`` are loaded;
    otherwise the models are trained here and saved under ``run_dir/{original,retrain}``.
    """
    seed = int(cfg.seed)
    out: dict[str, Any] = {}
    for stage in ("original", "retrain"):
        ckpt = cfg.get(f"{stage}_checkpoint")
        if stage == "original" and original is not None:
            out[stage], out[f"{stage}_time_s"] = original, original_time
            continue
        model = build_model(cfg, data, seed)
        saved = run_dir / stage / "model.safetensors"
        if not ckpt and cfg.get("resume") and saved.is_file():
            ckpt = saved  # a resumed run reuses the models it already trained
        if ckpt:
            load_model(model, ckpt)
            info = Path(ckpt).parent / "train_info.json" if Path(ckpt).is_file() else Path(ckpt) / "train_info.json"
            seconds = read_json(info).get("seconds") if info.is_file() else None
            model.eval()
        else:
            ds = data.train if stage == "original" else split.retain
            ds = ds.with_augment(data.augment_train)
            log.info("training the %s model on %d samples", stage, len(ds))
            with progress_label(f"train {stage}"):
                seconds = train_classifier(model, ds, cfg.train.args, run_dir / stage, seed, data.num_classes, resume=bool(cfg.get("resume")))
            state = full_state_dict(model)  # FSDP: gathered on every rank (a collective); None otherwise
            if is_main_process():  # under accelerate/torchrun only rank 0 writes (obliviate.distributed)
                save_model(model, run_dir / stage / "model.safetensors", state)
                atomic_write_json(run_dir / stage / "train_info.json", {"seconds": seconds, "samples": len(ds)})
        out[stage], out[f"{stage}_time_s"] = model, seconds
    return out


def run_train(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """The ``obliviate train`` job (vision): train the original and the retrained models,
    evaluate both; writes ``eval/{original,retrain}.json`` and ``metrics.json``, returns the latter."""
    seed = int(cfg.seed)
    data = load_data(cfg)
    split = split_forget(data, forget_selection(cfg), seed)
    refs = obtain_reference_models(cfg, data, split, run_dir)
    out: dict[str, Any] = {}
    for stage in ("original", "retrain"):
        metrics, per_sample = evaluate(refs[stage], split, data.test, data.num_classes, seed)
        out[stage] = {**metrics, "train_time_s": refs[f"{stage}_time_s"]}
        atomic_write_json(run_dir / "eval" / f"{stage}.json", per_sample)
    result = {"track": "vision", "status": "completed", "forget": forget_selection(cfg), **out}
    atomic_write_json(run_dir / "metrics.json", result)
    return result


def run_unlearning(cfg: DictConfig, run_dir: Path, *, data: VisionData | None = None, refs: dict[str, Any] | None = None,
                   split: Split | None = None, save_checkpoint: bool = True) -> dict[str, Any]:
    """The whole vision unlearning job; writes metrics.json and eval/*.json into ``run_dir``."""
    seed = int(cfg.seed)
    handler = cfg.trainer.handler
    if "vision" not in METHODS.meta(handler).get("tracks", ()):
        raise ConfigError(f"method {handler} is not available for the vision track; vision methods: {', '.join(METHODS.names(tracks='vision'))}")
    method_args = OmegaConf.to_container(cfg.trainer.method_args, resolve=True) if cfg.trainer.get("method_args") is not None else {}
    build_trainer(handler, method_args)  # fail fast on bad method_args, before any training
    data = data or load_data(cfg)
    split = split or split_forget(data, forget_selection(cfg), seed)
    refs = refs or obtain_reference_models(cfg, data, split, run_dir)
    evals = {}
    for stage in ("original", "retrain"):
        evals[stage] = evaluate(refs[stage], split, data.test, data.num_classes, seed)
    model = copy.deepcopy(refs["original"])
    # Model transforms before the method (pruning=omp|imp|mask, lora.enabled=true): obliviate.pipelines.prune

    model, transforms = prepare_model(cfg, model, data, run_dir, seed, evaluate=lambda m: evaluate(m, split, data.test, data.num_classes, seed)[0],
                                      split=split)
    guard = DivergenceGuard(make_guard_config(cfg.get("divergence")))
    info: dict[str, Any] = {}
    model, seconds, history = unlearn(model, handler, method_args, split, cfg.trainer.args, run_dir / "unlearned", seed, data.num_classes,
                                      resume=bool(cfg.get("resume")), guard=guard, info=info)
    model = finalize_model(model, transforms, run_dir)  # merge LoRA, re-check the mask, measure sparsity
    evals["unlearned"] = evaluate(model, split, data.test, data.num_classes, seed)
    state = full_state_dict(model) if save_checkpoint else None  # FSDP: every rank gathers (a collective)
    if save_checkpoint and is_main_process():
        save_model(model, run_dir / "unlearned" / "model.safetensors", state)
    retrain_m = evals["retrain"][0]
    result: dict[str, Any] = {
        "track": "vision",
        "status": "diverged" if guard.diverged else "completed",
        "divergence": guard.report(),
        "method": handler,
        "method_args": method_args,
        "data_files": {**data.files, **{f"{k}_checkpoint": str(cfg[f"{k}_checkpoint"]) for k in ("original", "retrain") if cfg.get(f"{k}_checkpoint")}},
        "forget": {**forget_selection(cfg), "n_forget": len(split.forget_idx), "n_retain": len(split.retain_idx), "n_test": len(data.test)},
        "original": with_gap(evals["original"][0], retrain_m),
        "retrain": {**retrain_m, "train_time_s": refs.get("retrain_time_s")},
        "unlearned": with_gap(evals["unlearned"][0], retrain_m),
        "warnings": info.get("warnings", []),
        "method_stats": info.get("method_stats", {}),
    }
    result.update(transform_report(transforms, retrain_m))  # sparsity (measured), pruning, pruned, lora
    rt = refs.get("retrain_time_s")
    result["unlearned"]["rte_s"] = seconds
    result["unlearned"]["rte_ratio_to_retrain"] = (seconds / rt) if rt else None
    result["log_history"] = history
    if is_main_process():  # every rank computed the same metrics; rank 0 writes them
        for stage, (_, per_sample) in evals.items():
            atomic_write_json(run_dir / "eval" / f"{stage}.json", per_sample)
        atomic_write_json(run_dir / "metrics.json", result)
    return result
