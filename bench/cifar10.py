"""CIFAR-10 benchmark: every vision unlearning method against retraining, dense and after OMP.

Trains the original model (train split) and the retrained gold standard (retain split
only), then runs each method on a copy of the original -- dense, and after one-shot global
magnitude pruning (OMP, seed 002's "prune first, then unlearn"; mask enforced while
unlearning) -- for random-10% and class-wise forgetting, and prints UA / RA / TA /
MIA-efficacy / Avg. Gap (to the retrained model) / RTE, plus the RTE ratio to retraining,
all measured in this process. A per-class subset and a narrow CIFAR ResNet-18 keep it
within CPU time; ``--full`` is the papers' setting (all 50,000 images, width-64 ResNet-18,
augmentation; needs a GPU in practice).

Usage::

    .venv/bin/python bench/cifar10.py --data ../shared/data/cifar10_jpg \
        [--train-per-class 500 --test-per-class 100 --width 16 --epochs 8 --threads 1 --augment] \
        [--settings random,class --sparsity dense,omp --omp-rate 0.9 --omp-finetune-epochs 2] \
        [--methods FT,GA,...] [hydra.override=value ... | Method:hydra.override=value ...]

Everything reuses ``obliviate.pipelines.vision`` (``split_forget``,
``obtain_reference_models``, ``unlearn``, ``evaluate``), ``obliviate.pipelines.prune``
(``prune_model``: OMP + fine-tuning with the mask enforced) and the per-method ``presets``
of ``experiment=vision/cifar10``. The Avg. Gap of the OMP rows is measured against the same
dense retrained model (the gold standard is exact retraining). ``--reuse`` loads the
original/retrained/pruned checkpoints of an earlier run in ``--out``. Writes
``<out>/results.json`` and ``<out>/results.md``.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import platform
import sys
import time
from pathlib import Path

import torch

COLUMNS = [("method", "method"), ("UA", "UA"), ("RA", "RA"), ("TA", "TA"), ("MIA", "MIA"), ("avg_gap", "Avg. Gap"),
           ("rte_s", "RTE (s)"), ("rte_ratio_s", "RTE / retrain"), ("dtheta_s", "‖Δθ‖/‖θ‖"), ("sparsity", "sparsity")]


def table_row(row: dict) -> dict:
    """``row`` with the ratio and the parameter change as strings (3 decimals / 3 significant digits)."""
    ratio, dtheta = row.get("rte_ratio"), row.get("dtheta")
    return {**row, "rte_ratio_s": "-" if ratio is None else f"{ratio:.3f}", "dtheta_s": "-" if dtheta is None else f"{dtheta:.3g}"}


def parse() -> tuple[argparse.Namespace, list[str]]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10_jpg"))
    p.add_argument("--out", default="bench_out/cifar10")
    p.add_argument("--train-per-class", type=int, default=500)
    p.add_argument("--test-per-class", type=int, default=100)
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--epochs", type=float, default=8, help="epochs of the original and the retrained model")
    p.add_argument("--augment", action="store_true", help="random crop + flip when training original/retrain (off: the "
                   "models memorise their training set within the CPU budget, as the full-length recipes do)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--settings", default="random,class", help="comma list of: random (10%% random), class (forget one class)")
    p.add_argument("--forget-class", type=int, default=3)
    p.add_argument("--methods", default="all", help="comma list, or 'all' (every method registered for the vision track)")
    p.add_argument("--sparsity", default="dense,omp", help="comma list of: dense, omp")
    p.add_argument("--omp-rate", type=float, default=0.9, help="OMP sparsity (fraction of conv/linear weights zeroed)")
    p.add_argument("--omp-finetune-epochs", type=float, default=2, help="epochs of masked training after OMP")
    p.add_argument("--full", action="store_true", help="the papers' setting: all images, width-64 ResNet-18, 182 epochs, "
                   "augmentation (GPU-sized)")
    p.add_argument("--reuse", action="store_true", help="load original/retrain checkpoints from --out if present")
    p.add_argument("--resume", action="store_true", help="--reuse, and keep the method rows of <out>/results.json "
                   "(methods of --redo are run again)")
    p.add_argument("--redo", default="", help="comma list of methods to run again under --resume")
    p.add_argument("--lora-r", type=int, default=8, help="LoRA rank of LoRAUnlearner (seed 004 trains LoRA adapters only)")
    p.add_argument("--lora-alpha", type=float, default=41, help="LoRA alpha of LoRAUnlearner (seed 004's example value)")
    p.add_argument("--lora-lr", type=float, default=1e-3, help="learning rate of LoRAUnlearner's adapters (the preset's "
                   "1e-4 is for full-model training and barely moves the adapters)")
    return p.parse_known_args()


def setting_overrides(args: argparse.Namespace) -> list[str]:
    """The benchmark's data / model / reference-training overrides (also used by bench/tune.py)."""
    return [
        "experiment=vision/cifar10", f"paths.cifar10={args.data}", f"data.max_train_per_class={args.train_per_class}",
        f"data.max_test_per_class={args.test_per_class}", f"model.width={args.width}", f"seed={args.seed}",
        f"train.args.num_train_epochs={args.epochs}", f"data.augment={str(args.augment).lower()}", "++train.args.disable_tqdm=true", "++trainer.args.disable_tqdm=true",
    ]


def forget_selections(args: argparse.Namespace) -> dict[str, dict]:
    """Setting name -> forget selection (random 10 %, one class)."""
    return {"random": {"forget_fraction": 0.1}, "class": {"forget_class": args.forget_class}}


def relative_change(before: torch.nn.Module, after: torch.nn.Module) -> float:
    """‖θ_after − θ_before‖ / ‖θ_before‖ over parameters."""
    num = den = 0.0
    for (_, a), (_, b) in zip(before.named_parameters(), after.named_parameters()):
        num += float((b.detach() - a.detach()).double().pow(2).sum())
        den += float(a.detach().double().pow(2).sum())
    return (num / max(den, 1e-30)) ** 0.5


def main() -> None:
    args, overrides = parse()
    args.reuse = args.reuse or args.resume
    if args.full:
        args.train_per_class, args.test_per_class, args.width, args.augment = 5000, 1000, 64, True
        args.epochs = max(args.epochs, 182)
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("obliviate").setLevel(logging.INFO)
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    from obliviate.checkpoint import load_model, save_model
    from obliviate.methods import METHODS
    from obliviate.metrics.classification import GAP_KEYS, avg_gap
    from obliviate.pipelines import vision
    from obliviate.pipelines.common import apply_method_preset
    from obliviate.pipelines.prune import prune_model
    from obliviate.pruning import attach_masks, attached_masks, enforce_masks, measure_sparsity
    from obliviate.report.table import format_table

    common = [o for o in overrides if ":" not in o.split("=", 1)[0]]
    per_method: dict[str, list[str]] = {}
    for o in overrides:
        if ":" in o.split("=", 1)[0]:
            m, rest = o.split(":", 1)
            per_method.setdefault(m, []).append(rest)
    out = Path(args.out)
    base_overrides = setting_overrides(args)
    selections = forget_selections(args)
    methods = METHODS.names(tracks="vision") if args.methods == "all" else [m for m in args.methods.split(",") if m]
    sparsities = [s for s in args.sparsity.split(",") if s]
    bad = [s for s in sparsities if s not in ("dense", "omp")]
    if bad:
        raise SystemExit(f"--sparsity takes dense and/or omp, got {bad}")
    report = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "torch": torch.__version__, "threads": args.threads,
              "cpu": platform.processor() or platform.machine(), "omp_rate": args.omp_rate, "omp_finetune_epochs": args.omp_finetune_epochs,
              "settings": {}}
    print(f"CIFAR-10 subset: {args.train_per_class} train / {args.test_per_class} test images per class; "
          f"ResNet-18 (CIFAR stem) width {args.width}; original/retrain {args.epochs:g} epochs "
          f"({'with' if args.augment else 'without'} augmentation); torch threads {args.threads}; methods {','.join(methods)}", flush=True)
    markdown = [f"command: `{report['command']}`\n"]
    previous = json.loads((Path(args.out) / "results.json").read_text()) if args.resume and (Path(args.out) / "results.json").is_file() else {}
    redo = {m for m in args.redo.split(",") if m}
    with initialize_config_module("obliviate.configs", version_base="1.3"):
        base = compose(config_name="unlearn", overrides=[*base_overrides, *common])
        data = vision.load_data(base)
        original, original_time = None, None
        pruned, prune_record = None, None
        for setting in args.settings.split(","):
            sel = selections[setting]
            sel_over = [f"{k}={v}" for k, v in sel.items()]
            cfg = compose(config_name="unlearn", overrides=[*base_overrides, *sel_over, *common])
            sdir = out / setting
            if args.reuse:
                for stage in ("original", "retrain"):
                    ckpt = (out / "random" if stage == "original" else sdir) / stage / "model.safetensors"
                    if ckpt.is_file():
                        OmegaConf.update(cfg, f"{stage}_checkpoint", str(ckpt), force_add=True)
            split = vision.split_forget(data, sel, args.seed)
            refs = vision.obtain_reference_models(cfg, data, split, sdir, original=original, original_time=original_time)
            original, original_time = refs["original"], refs["original_time_s"]
            retrain_time = refs["retrain_time_s"]
            evals = {s: vision.evaluate(refs[s], split, data.test, data.num_classes, args.seed)[0] for s in ("original", "retrain")}
            rm = evals["retrain"]
            print(f"\n[{setting}] forget {len(split.forget_idx)} / retain {len(split.retain_idx)} / test {len(data.test)}; "
                  f"original trained in {original_time or float('nan'):.1f}s, retrain in {retrain_time or float('nan'):.1f}s", flush=True)
            report["settings"][setting] = {"selection": sel, "n_forget": len(split.forget_idx), "n_retain": len(split.retain_idx),
                                           "n_test": len(data.test), "retrain_time_s": retrain_time, "tables": {}}
            for sparsity in sparsities:
                if sparsity == "dense":
                    start_model = refs["original"]
                    rows = [{"method": "original", **evals["original"], "avg_gap": avg_gap(evals["original"], rm, GAP_KEYS),
                             "rte_s": original_time, "rte_ratio": (original_time / retrain_time) if original_time and retrain_time else None}]
                else:
                    if pruned is None:  # one OMP model (from the one original) serves both settings
                        pruned = copy.deepcopy(refs["original"])
                        pdir = out / f"omp{args.omp_rate:g}"
                        ckpt = pdir / "model.safetensors"
                        popts = {"name": "omp", "rate": args.omp_rate, "include_head": False, "finetune_epochs": args.omp_finetune_epochs}
                        t0 = time.perf_counter()
                        if args.reuse and ckpt.is_file() and (pdir / "mask.safetensors").is_file():
                            from obliviate.pruning import load_masks
                            load_model(pruned, ckpt)
                            attach_masks(pruned, load_masks(pdir / "mask.safetensors"))
                            prune_record = json.loads((pdir / "record.json").read_text())
                        else:
                            prune_record = prune_model(pruned, popts, cfg, data, pdir, args.seed)
                            prune_record["seconds"] = time.perf_counter() - t0
                            save_model(pruned, ckpt)
                            (pdir / "record.json").write_text(json.dumps(prune_record, indent=1, default=str))
                        print(f"OMP {args.omp_rate:g} + {args.omp_finetune_epochs:g} fine-tuning epochs in {prune_record.get('seconds', float('nan')):.1f}s; "
                              f"measured sparsity {measure_sparsity(pruned).sparsity:.4f}", flush=True)
                    start_model = pruned
                    pm = vision.evaluate(pruned, split, data.test, data.num_classes, args.seed)[0]
                    rows = [{"method": f"original + OMP {args.omp_rate:g}", **pm, "avg_gap": avg_gap(pm, rm, GAP_KEYS),
                             "rte_s": prune_record.get("seconds"), "rte_ratio": None}]
                masks = attached_masks(start_model)
                done = {r["method"]: r for r in previous.get("settings", {}).get(setting, {}).get("tables", {}).get(sparsity, {}).get("rows", [])}
                for m in methods:
                    if m in done and m not in redo:
                        rows.append(done[m])
                        print(f"  [{setting}/{sparsity}] {m:<14} kept from the earlier results.json", flush=True)
                        continue
                    lora_lr = [f"trainer.args.learning_rate={args.lora_lr}"] if m == "LoRAUnlearner" else []
                    mo = [*base_overrides, *sel_over, f"trainer={m}", *common, *lora_lr, *per_method.get(m, [])]
                    mcfg = compose(config_name="unlearn", overrides=mo)
                    mcfg = apply_method_preset(mcfg, mcfg.get("presets"), m, mo)
                    margs = OmegaConf.to_container(mcfg.trainer.method_args, resolve=True) if mcfg.trainer.get("method_args") else {}
                    model = copy.deepcopy(start_model)
                    if masks:
                        attach_masks(model, masks)
                    t0 = time.perf_counter()
                    if m == "LoRAUnlearner":  # seed 004: only LoRA adapters train; merged afterwards
                        from obliviate.models.lora import apply_lora

                        model = apply_lora(model, r=args.lora_r, alpha=args.lora_alpha)
                    info: dict = {}
                    model, seconds, history = vision.unlearn(model, m, margs, split, mcfg.trainer.args, sdir / sparsity / m, args.seed, data.num_classes,
                                                             info=info)
                    if m == "LoRAUnlearner":
                        model = model.merge_and_unload()
                    if masks:
                        enforce_masks(model)
                    total = time.perf_counter() - t0
                    metrics = vision.evaluate(model, split, data.test, data.num_classes, args.seed)[0]
                    row = {"method": m, **metrics, "avg_gap": avg_gap(metrics, rm, GAP_KEYS), "rte_s": seconds,
                           "rte_ratio": seconds / retrain_time if retrain_time else None, "dtheta": relative_change(start_model, model),
                           "sparsity": measure_sparsity(model).sparsity, "method_args": margs,
                           "trainer_args": OmegaConf.to_container(mcfg.trainer.args, resolve=True),
                           "warnings": info.get("warnings", []), "method_stats": info.get("method_stats", {})}
                    rows.append(row)
                    print(f"  [{setting}/{sparsity}] {m:<14} UA {row['UA']:6.2f} RA {row['RA']:6.2f} TA {row['TA']:6.2f} MIA {row['MIA']:6.2f} "
                          f"gap {row['avg_gap']:6.2f} RTE {seconds:7.1f}s ({row['rte_ratio'] or float('nan'):.3f}x retrain) "
                          f"dθ {row['dtheta']:.3g} sparsity {row['sparsity']:.3f} (wall {total:.1f}s)", flush=True)
                    for w in row["warnings"]:
                        print(f"    WARNING {m}: {w}", flush=True)
                    # keep every finished row (a cut run loses nothing; --resume continues it)
                    report["settings"][setting]["tables"][sparsity] = {"rows": rows, "table": None, "partial": True, "retrain": {**rm, "rte_s": retrain_time}}
                    out.mkdir(parents=True, exist_ok=True)
                    (out / "results.json").write_text(json.dumps(report, indent=1, default=str))
                rows.append({"method": "retrain", **rm, "avg_gap": 0.0, "rte_s": retrain_time, "rte_ratio": 1.0 if retrain_time else None})
                table = format_table([table_row(r) for r in rows], COLUMNS)
                title = f"{setting} ({'dense' if sparsity == 'dense' else f'OMP {args.omp_rate:g}'}): forget {len(split.forget_idx)} of {len(data.train)} training images"
                print(f"\n## {title}\n\n{table}\n", flush=True)
                report["settings"][setting]["tables"][sparsity] = {"rows": rows, "table": table}
                markdown.append(f"## {title}\n\n{table}\n")
                out.mkdir(parents=True, exist_ok=True)
                (out / "results.json").write_text(json.dumps(report, indent=1, default=str))
                (out / "results.md").write_text("\n".join(markdown))
    print(f"results: {out / 'results.json'}, {out / 'results.md'}")


if __name__ == "__main__":
    main()
