"""Vision pruning jobs: ``obliviate prune`` and the pruning/LoRA transforms of ``obliviate unlearn``.

``obliviate prune`` trains (or loads) the original model, prunes it (``pruning=omp|imp``),
optionally fine-tunes it with the mask enforced, and writes ``pruned/model.safetensors``,
``pruned/mask.safetensors`` and ``metrics.json`` (accuracies + *measured* sparsity, and the
uniform top-level keys ``params_before/after``, ``nonzero_params_before/after``,
``wall_time_s`` and, with a forget selection such as ``forget_class=9``,
``forget_accuracy_before/after`` and ``retain_accuracy_before/after``). A physically pruned CNN
(``pruning=loraprune``) is also written shrunk as ``pruned/model_physical.safetensors``
(see :func:`_save_physical`).

In ``obliviate unlearn``, :func:`prepare_model` prunes and/or LoRA-wraps the copy of the
original model before the method runs, and :func:`finalize_model` merges adapters, re-checks
the mask and measures sparsity afterwards. Both are no-ops with ``pruning=none`` and
``lora.enabled=false``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from torch import nn

from obliviate.checkpoint import load_model, load_state, save_model
from obliviate.data import stack_collate
from obliviate.data.vision import TensorImageDataset, VisionData
from obliviate.engine import SupervisedTrainer
from obliviate.engine.progress import progress_label
from obliviate.errors import ConfigError
from obliviate.io import atomic_write_json
from obliviate.models.adapters import ClassifierAdapter
from obliviate.pipelines.common import timer, training_arguments
from obliviate.pruning import PRUNERS, attach_masks, enforce_masks, load_masks, measure_sparsity, param_counts, prunable_weights, save_masks
from obliviate.pruning.magnitude import RewindCapture

log = logging.getLogger(__name__)

# Keys of a pruning config consumed here (the rest goes to the pruner function).
PIPELINE_KEYS = ("name", "finetune_epochs", "rewind_epoch", "rewind_checkpoint", "retrain_epochs", "mask_file")


def _plain(node: Any) -> dict[str, Any]:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node or {})


def pruning_options(cfg: DictConfig) -> dict[str, Any] | None:
    """The ``pruning`` block, or None when absent or ``name: none``."""
    opts = _plain(cfg.get("pruning"))
    return opts if opts and str(opts.get("name", "none")).lower() not in ("none", "null") else None


def lora_options(cfg: DictConfig) -> dict[str, Any] | None:
    """The ``lora`` block when ``lora.enabled`` is true, else None."""
    opts = _plain(cfg.get("lora"))
    return opts if opts.get("enabled") else None


def train_masked(model: nn.Module, dataset: TensorImageDataset, args_cfg: Any, out_dir: Path, seed: int, num_classes: int, *,
                 epochs: float | None = None, callbacks: Sequence[Any] = ()) -> float:
    """Supervised training (masks attached to ``model`` stay enforced). Returns seconds.

    Args:
        epochs: Overrides ``num_train_epochs`` of ``args_cfg``.
        callbacks: Extra ``TrainerCallback``s (e.g. :class:`RewindCapture`).
    """
    raw = _plain(args_cfg)
    if epochs is not None:
        raw["num_train_epochs"] = epochs
    args = training_arguments(raw, out_dir / "trainer", seed, len(dataset))
    trainer = SupervisedTrainer(model, args, ClassifierAdapter(num_classes), train_dataset=dataset, data_collator=stack_collate,
                                callbacks=list(callbacks))
    with timer() as t:
        trainer.train()
    enforce_masks(model)
    model.eval()
    return t["s"]


def rewind_state_for(cfg: DictConfig, opts: dict[str, Any], data: VisionData, seed: int, captured: dict | None = None) -> dict | None:
    """The IMP rewind state: captured, from ``rewind_checkpoint``, or the seeded initial weights (``k = 0``)."""
    if captured is not None:
        return captured
    if opts.get("rewind_checkpoint"):
        return load_state(opts["rewind_checkpoint"])
    k = int(opts.get("rewind_epoch", 0))
    if k != 0:
        raise ConfigError(
            f"IMP with pruning.rewind_epoch={k} needs the weights of epoch {k}: give pruning.rewind_checkpoint=PATH "
            "(written by 'obliviate prune pruning=imp' as original/rewind_epoch<k>.safetensors) or use pruning.rewind_epoch=0")
    if cfg.get("original_checkpoint"):
        log.warning("IMP rewinds to the seeded initial weights (seed=%s); they match original_checkpoint only if it was "
                    "trained by obliviate with the same seed and model", seed)
    from obliviate.pipelines.vision import build_model

    return {k: v.detach().clone() for k, v in build_model(cfg, data, seed).state_dict().items()}


def prune_model(model: nn.Module, opts: dict[str, Any], cfg: DictConfig, data: VisionData, out_dir: Path, seed: int,
                rewind_state: dict | None = None) -> dict[str, Any]:
    """Prune ``model`` in place as configured (then fine-tune if asked); returns the pruning record.

    IMP retrains on ``data.train`` with ``cfg.train.args`` (``retrain_epochs`` overrides the
    epoch count); the fine-tuning after pruning uses the same arguments for
    ``finetune_epochs`` epochs. The returned record holds the *measured* sparsity.
    """
    name = str(opts["name"])
    include_head = bool(opts.get("include_head", False))
    kwargs = {k: v for k, v in opts.items() if k not in PIPELINE_KEYS}
    train_ds = data.train.with_augment(data.augment_train)
    args_cfg = cfg.train.args
    with timer() as t:
        if name == "mask":  # a mask saved by `obliviate prune` (original_checkpoint = its pruned model)
            if not opts.get("mask_file"):
                raise ConfigError("pruning=mask needs pruning.mask_file=PATH (the mask.safetensors of an 'obliviate prune' run)")
            masks = load_masks(opts["mask_file"])
            attach_masks(model, masks)
            info: dict[str, Any] = {"method": "mask", "mask_file": str(opts["mask_file"])}
        else:
            pruner = PRUNERS.get(name)
            if PRUNERS.canonical(name) == "imp":
                epochs = opts.get("retrain_epochs")
                kwargs["rewind_state"] = rewind_state
                rounds = int(opts.get("rounds", 3))

                def retrain(m: nn.Module, i: int) -> float:
                    with progress_label(f"IMP round {i}/{rounds}: retrain"):
                        return train_masked(m, train_ds, args_cfg, out_dir / f"imp_round{i}", seed, data.num_classes, epochs=epochs)

                kwargs["retrain"] = retrain
            result = pruner(model, **kwargs)
            masks = getattr(result, "masks", None) or {}
            info = dict(getattr(result, "info", {}) or {})
        ft = float(opts.get("finetune_epochs") or 0)
        if ft > 0:
            with progress_label(f"{name}: fine-tune"):
                train_masked(model, train_ds, args_cfg, out_dir / "finetune", seed, data.num_classes, epochs=ft)
            info["finetune_epochs"] = ft
    if masks:
        save_masks(masks, out_dir / "mask.safetensors")
        info["mask_file"] = str(out_dir / "mask.safetensors")
    measured = measure_sparsity(model, include_head=include_head)
    info.update({"sparsity": measured.sparsity, "zeros": measured.zeros, "prunable_weights": measured.total,
                 "per_layer_sparsity": measured.per_layer, "include_head": include_head, "seconds": t["s"]})
    return info


# ----------------------------------------------------------------------------- obliviate unlearn
def prepare_model(cfg: DictConfig, model: nn.Module, data: VisionData, run_dir: Path, seed: int,
                  evaluate: Callable[[nn.Module], dict[str, Any]] | None = None, split: Any = None) -> tuple[nn.Module, dict[str, Any]]:
    """Prune (``pruning``) and/or LoRA-wrap (``lora``) the copy of the original before unlearning.

    Args:
        cfg: The run config (``pruning``, ``lora``, ``train.args`` for IMP/fine-tuning).
        model: The copy of the original model (modified in place by pruning).
        data: The dataset (IMP retraining and fine-tuning use ``data.train``).
        run_dir: Run directory (``pruned/mask.safetensors`` is written there).
        seed: Run seed.
        evaluate: Metrics of the pruned model before unlearning (``metrics.json["pruned"]``).
        split: The forget/retain split (needed by ``pruning=unlearning_prune``).

    Returns:
        ``(model, state)``; ``state`` is handed to :func:`finalize_model` and its public
        entries (``pruning``, ``lora``, ``sparsity``) go into ``metrics.json``.
    """
    popts, lopts = pruning_options(cfg), lora_options(cfg)
    include_head = bool((popts or {}).get("include_head", False))
    state: dict[str, Any] = {"sparsity": {"original": measure_sparsity(model, include_head=include_head).sparsity}}
    if popts and str(popts["name"]).lower() == "unlearning_prune":  # dual-importance, see pipelines/prune_structured.py
        if split is None:
            raise ConfigError("pruning=unlearning_prune needs the forget/retain split (pass split= to prepare_model)")
        from obliviate.pipelines.prune_structured import vision_unlearning_prune

        model, record = vision_unlearning_prune(model, split, popts, seed)
        state["pruning"] = {**popts, **record, "sparsity": measure_sparsity(model, include_head=include_head).sparsity}
        if evaluate is not None:
            state["pruned"] = evaluate(model)
    elif popts and str(popts["name"]).lower() == "loraprune":
        raise ConfigError("pruning=loraprune is a compression job: run 'obliviate prune pruning=loraprune', then unlearn with "
                          "original_checkpoint=RUN/pruned/model.safetensors pruning=mask pruning.mask_file=RUN/pruned/mask.safetensors")
    elif popts:
        rewind_state = rewind_state_for(cfg, popts, data, seed) if str(popts["name"]).lower() == "imp" else None
        state["pruning"] = prune_model(model, popts, cfg, data, run_dir / "pruned", seed, rewind_state)
        if evaluate is not None:
            state["pruned"] = evaluate(model)
    state["sparsity"]["before_unlearning"] = measure_sparsity(model, include_head=include_head).sparsity
    if lopts:
        from obliviate.models.lora import apply_lora

        model = apply_lora(model, r=int(lopts.get("r", 8)), alpha=float(lopts.get("alpha", 16)), dropout=float(lopts.get("dropout") or 0.0),
                           target_modules=lopts.get("target_modules") or None, modules_to_save=lopts.get("modules_to_save") or None)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in model.parameters())
        state["lora"] = {**lopts, "target_modules": sorted(model.peft_config["default"].target_modules),
                         "trainable_params": trainable, "total_params": total}
    state["include_head"] = include_head
    return model, state


def finalize_model(model: nn.Module, state: dict[str, Any], run_dir: Path) -> nn.Module:
    """After unlearning: save/merge LoRA adapters, re-enforce masks, measure sparsity."""
    if "lora" in state:
        model.save_pretrained(str(run_dir / "unlearned" / "adapter"))
        state["lora"]["adapter_dir"] = str(run_dir / "unlearned" / "adapter")
        if state["lora"].get("merge"):
            model = model.merge_and_unload()
    if "pruning" in state:
        leaked = enforce_masks(model)
        if leaked:
            log.info("re-applied the pruning mask on %d layers after unlearning (merged adapters / one-shot update)", leaked)
    model.eval()
    state["sparsity"]["after_unlearning"] = measure_sparsity(model, include_head=state.get("include_head", False)).sparsity
    return model


def transform_report(state: dict[str, Any], retrain: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``metrics.json`` entries of the transforms (``sparsity``, ``pruning``, ``pruned``, ``lora``).

    Args:
        state: From :func:`prepare_model` / :func:`finalize_model`.
        retrain: The retrained model's metrics; adds ``avg_gap`` to the pruned model's row.
    """
    out = {k: state[k] for k in ("sparsity", "pruning", "pruned", "lora") if k in state}
    if "pruned" in out and retrain is not None:
        from obliviate.metrics.classification import GAP_KEYS, avg_gap

        out["pruned"] = {**out["pruned"], "avg_gap": avg_gap(out["pruned"], retrain, GAP_KEYS)}
    return out


# ----------------------------------------------------------------------------- obliviate prune
def _accuracies(model: nn.Module, data: VisionData, include_head: bool) -> dict[str, Any]:
    from obliviate.metrics.classification import accuracy, per_class_accuracy
    from obliviate.pipelines.vision import predict

    test, train = predict(model, data.test), predict(model, data.train)
    sp = measure_sparsity(model, include_head=include_head)
    return {"test_accuracy": accuracy(test["pred"], test["label"]), "train_accuracy": accuracy(train["pred"], train["label"]),
            "per_class_test_accuracy": per_class_accuracy(test["pred"], test["label"], data.num_classes), "sparsity": sp.sparsity}


def run_prune(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """The ``obliviate prune`` job (vision track); writes metrics.json and returns it."""
    from obliviate.pipelines.vision import build_model, load_data

    opts = pruning_options(cfg)
    if not opts:
        raise ConfigError(f"obliviate prune needs a pruner: pruning=omp or pruning=imp (registered: {', '.join(PRUNERS.names())})")
    wall_start = time.perf_counter()
    seed = int(cfg.seed)
    data = load_data(cfg)
    model = build_model(cfg, data, seed)
    is_imp = str(opts["name"]).lower() == "imp"
    captured, seconds = None, None
    if cfg.get("original_checkpoint"):
        load_model(model, cfg.original_checkpoint)  # an ordinary or a physically pruned (shrunk) checkpoint
        model.eval()
    else:
        capture = RewindCapture(int(opts.get("rewind_epoch", 0))) if is_imp else None
        seconds = train_masked(model, data.train.with_augment(data.augment_train), cfg.train.args, run_dir / "original", seed,
                               data.num_classes, callbacks=[capture] if capture else [])
        save_model(model, run_dir / "original" / "model.safetensors")
        atomic_write_json(run_dir / "original" / "train_info.json", {"seconds": seconds, "samples": len(data.train)})
        if capture is not None:
            if capture.state is None:
                raise ConfigError(f"pruning.rewind_epoch={capture.epoch} is beyond the {cfg.train.args.num_train_epochs} training epochs")
            captured = capture.state
            save_model_state(captured, run_dir / "original" / f"rewind_epoch{capture.epoch}.safetensors")
    include_head = bool(opts.get("include_head", False))
    original = _accuracies(model, data, include_head)
    from obliviate.pipelines.common import forget_selection

    selection = forget_selection(cfg)
    split = None
    if selection:
        from obliviate.pipelines.vision import split_forget

        split = split_forget(data, selection, seed)
    counts_before, fr_before = param_counts(model), _forget_retain(model, split)
    rewind_state = rewind_state_for(cfg, opts, data, seed, captured) if is_imp else None
    physical: dict[str, Any] = {}
    if str(opts["name"]).lower() == "unlearning_prune":  # forget/retain = the configured forget selection
        from obliviate.pipelines.prune_structured import vision_unlearning_prune
        from obliviate.pipelines.vision import split_forget

        model, info = vision_unlearning_prune(model, split if split is not None else split_forget(data, selection, seed), opts, seed)
        from obliviate.pruning import attached_masks

        info["mask_file"] = str(save_masks(attached_masks(model), run_dir / "pruned" / "mask.safetensors"))
    elif str(opts["name"]).lower() == "loraprune":  # structured conv channels (pipelines/prune_structured.py)
        from obliviate.pipelines.prune_structured import vision_loraprune
        from obliviate.pruning import attached_masks

        model, info = vision_loraprune(model, data, opts, seed)
        removal = info.get("removal") or {}
        if removal.get("removed"):
            physical = _save_physical(model, removal, run_dir / "pruned", include_head)
            info["removal"] = {k: v for k, v in removal.items() if k != "kept"}  # kept indices: pruned/physical.json
            info["mask_file"] = physical["mask_file"]
        else:
            info["mask_file"] = str(save_masks(attached_masks(model), run_dir / "pruned" / "mask.safetensors"))
    else:
        info = prune_model(model, opts, cfg, data, run_dir / "pruned", seed, rewind_state)
    if not physical:
        save_model(model, run_dir / "pruned" / "model.safetensors")
    pruned = _accuracies(model, data, include_head)
    if physical:  # sparsity of the full-size equivalent (model_file) vs of the shrunk model itself
        pruned["sparsity_physical"], pruned["sparsity"] = pruned["sparsity"], physical["full_size_sparsity"]
    counts_after, fr_after = param_counts(model), _forget_retain(model, split)
    result = {"track": "vision", "pruning": {**opts, **info}, "original": {**original, "train_time_s": seconds}, "pruned": pruned,
              "model_file": str(run_dir / "pruned" / "model.safetensors"),
              **{f"{k}_before": v for k, v in counts_before.items()}, **{f"{k}_after": v for k, v in counts_after.items()},
              **{f"{k}_before": v for k, v in fr_before.items()}, **{f"{k}_after": v for k, v in fr_after.items()},
              "forget_selection": selection or None}
    if physical:
        result.update({"physical_model_file": physical["model_file"], "physical_mask_file": physical["physical_mask_file"]})
    result["wall_time_s"] = time.perf_counter() - wall_start
    atomic_write_json(run_dir / "metrics.json", result)
    return result


def _forget_retain(model: nn.Module, split: Any) -> dict[str, float]:
    """Forget/retain accuracy (%) of ``model`` on the run's forget selection (``{}`` without one)."""
    if split is None:
        return {}
    from obliviate.metrics.classification import accuracy
    from obliviate.pipelines.vision import predict

    f, r = predict(model, split.forget), predict(model, split.retain)
    return {"forget_accuracy": accuracy(f["pred"], f["label"]), "retain_accuracy": accuracy(r["pred"], r["label"])}


def _save_physical(model: nn.Module, removal: dict[str, Any], out_dir: Path, include_head: bool = False) -> dict[str, Any]:
    """Save a physically pruned CNN twice: shrunk and as the equivalent full-size checkpoint.

    ``model_physical.safetensors`` (+ ``mask_physical.safetensors``) hold the shrunk model, with
    the new module sizes in the safetensors metadata (:func:`~obliviate.pruning.physical_cnn.load_physical`
    rebuilds a freshly built model to them). ``model.safetensors`` / ``mask.safetensors`` hold the
    full-size equivalent (removed channels are zero weights and pruned mask entries), so the
    documented ``original_checkpoint=RUN/pruned/model.safetensors pruning=mask`` workflow, which
    builds the configured full-size architecture, keeps working. ``physical.json`` is the removal report.
    Returns the file names and ``full_size_sparsity`` (measured sparsity of the full-size equivalent).
    """
    from obliviate.pruning import attached_masks
    from obliviate.pruning.physical_cnn import expand_state_dict, save_physical

    physical = save_physical(model, removal, out_dir / "model_physical.safetensors")
    shrunk_masks = attached_masks(model)
    physical_masks = save_masks(shrunk_masks, out_dir / "mask_physical.safetensors")
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    full_state = expand_state_dict(state, removal)
    save_model_state(full_state, out_dir / "model.safetensors")
    full_masks = save_masks(expand_state_dict(shrunk_masks, removal), out_dir / "mask.safetensors")
    atomic_write_json(out_dir / "physical.json", removal)
    names = list(prunable_weights(model, include_head=include_head))  # same names in the full-size model
    total = sum(full_state[n].numel() for n in names)
    zeros = sum(int(full_state[n].numel() - full_state[n].count_nonzero()) for n in names)
    return {"model_file": str(physical), "physical_mask_file": str(physical_masks), "mask_file": str(full_masks),
            "full_size_sparsity": zeros / total if total else 0.0}


def save_model_state(state: dict, path: Path) -> Path:
    """Save a CPU state dict as safetensors (atomic)."""
    from safetensors.torch import save

    from obliviate.io import atomic_write_bytes

    return atomic_write_bytes(path, save({k: v.contiguous() for k, v in state.items()}))


def sparsity_table(result: dict[str, Any]) -> str:
    """Two-row text table of ``obliviate prune`` results."""
    rows = [("original", result["original"]), ("pruned", result["pruned"])]
    lines = [f"{'model':<10} {'test_acc':>9} {'train_acc':>10} {'sparsity':>9}"]
    lines += [f"{n:<10} {r['test_accuracy']:>9.2f} {r['train_accuracy']:>10.2f} {100 * r['sparsity']:>8.2f}%" for n, r in rows]
    return "\n".join(lines)


__all__ = ["finalize_model", "lora_options", "prepare_model", "prune_model", "pruning_options", "run_prune", "train_masked",
           "transform_report"]
