"""CIFAR-10 benchmark: vision unlearning methods against retraining, on CPU.

Trains the original model (train split) and the retrained gold standard (retain split
only), runs each method on a copy of the original, and prints UA / RA / TA / MIA-efficacy /
Avg. Gap (to the retrained model) / RTE, plus the RTE ratio to retraining, all measured in
this process. A per-class subset and a narrow CIFAR ResNet-18 keep it within CPU time.

Usage::

    .venv/bin/python bench/cifar10_vs_retrain.py --data ../shared/data/cifar10_jpg \
        [--train-per-class 500 --test-per-class 100 --width 16 --epochs 8 --threads 1 --augment] \
        [--settings random,class --methods FT,GA,RL,l1_sparse,SalUn,SCRUB,SSD,IU,FF,BadTeacher,LoRAUnlearner] \
        [hydra.override=value ... | Method:hydra.override=value ...]

Everything reuses ``obliviate.pipelines.vision`` (``split_forget``,
``obtain_reference_models``, ``unlearn``, ``evaluate``) and the per-method ``presets`` of
``experiment=vision/cifar10``. ``--reuse`` loads the original/retrained checkpoints of an
earlier run in ``--out`` (for tuning; the RTE ratio then uses the stored retrain time).
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

METHODS_DEFAULT = "FT,GA,RL,l1_sparse,SalUn,SCRUB,SSD,IU,FF,BadTeacher,LoRAUnlearner"
COLUMNS = [("method", "method"), ("UA", "UA"), ("RA", "RA"), ("TA", "TA"), ("MIA", "MIA"), ("avg_gap", "Avg. Gap"),
           ("rte_s", "RTE (s)"), ("rte_ratio_s", "RTE / retrain"), ("dtheta_s", "‖Δθ‖/‖θ‖")]


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
    p.add_argument("--methods", default=METHODS_DEFAULT)
    p.add_argument("--reuse", action="store_true", help="load original/retrain checkpoints from --out if present")
    return p.parse_known_args()


def relative_change(before: torch.nn.Module, after: torch.nn.Module) -> float:
    """‖θ_after − θ_before‖ / ‖θ_before‖ over parameters."""
    num = den = 0.0
    for (_, a), (_, b) in zip(before.named_parameters(), after.named_parameters()):
        num += float((b.detach() - a.detach()).double().pow(2).sum())
        den += float(a.detach().double().pow(2).sum())
    return (num / max(den, 1e-30)) ** 0.5


def main() -> None:
    args, overrides = parse()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("obliviate").setLevel(logging.INFO)
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    from obliviate.metrics.classification import GAP_KEYS, avg_gap
    from obliviate.pipelines import vision
    from obliviate.pipelines.common import apply_method_preset
    from obliviate.report.table import format_table

    common = [o for o in overrides if ":" not in o.split("=", 1)[0]]
    per_method: dict[str, list[str]] = {}
    for o in overrides:
        if ":" in o.split("=", 1)[0]:
            m, rest = o.split(":", 1)
            per_method.setdefault(m, []).append(rest)
    out = Path(args.out)
    base_overrides = [
        "experiment=vision/cifar10", f"paths.cifar10={args.data}", f"data.max_train_per_class={args.train_per_class}",
        f"data.max_test_per_class={args.test_per_class}", f"model.width={args.width}", f"seed={args.seed}",
        f"train.args.num_train_epochs={args.epochs}", f"data.augment={str(args.augment).lower()}", "++train.args.disable_tqdm=true", "++trainer.args.disable_tqdm=true",
    ]
    selections = {"random": {"forget_fraction": 0.1}, "class": {"forget_class": args.forget_class}}
    methods = [m for m in args.methods.split(",") if m]
    report = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "torch": torch.__version__, "threads": args.threads,
              "cpu": platform.processor() or platform.machine(), "settings": {}}
    print(f"CIFAR-10 subset: {args.train_per_class} train / {args.test_per_class} test images per class; "
          f"ResNet-18 (CIFAR stem) width {args.width}; original/retrain {args.epochs:g} epochs "
          f"({'with' if args.augment else 'without'} augmentation); torch threads {args.threads}", flush=True)
    with initialize_config_module("obliviate.configs", version_base="1.3"):
        base = compose(config_name="unlearn", overrides=[*base_overrides, *common])
        data = vision.load_data(base)
        original, original_time = None, None
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
            rows = [{"method": "original", **evals["original"], "avg_gap": avg_gap(evals["original"], rm, GAP_KEYS),
                     "rte_s": original_time, "rte_ratio": (original_time / retrain_time) if original_time and retrain_time else None}]
            print(f"\n[{setting}] forget {len(split.forget_idx)} / retain {len(split.retain_idx)} / test {len(data.test)}; "
                  f"original trained in {original_time or float('nan'):.1f}s, retrain in {retrain_time or float('nan'):.1f}s", flush=True)
            for m in methods:
                mo = [*base_overrides, *sel_over, f"trainer={m}", *common, *per_method.get(m, [])]
                mcfg = compose(config_name="unlearn", overrides=mo)
                mcfg = apply_method_preset(mcfg, mcfg.get("presets"), m, mo)
                margs = OmegaConf.to_container(mcfg.trainer.method_args, resolve=True) if mcfg.trainer.get("method_args") else {}
                model = copy.deepcopy(refs["original"])
                t0 = time.perf_counter()
                model, seconds, history = vision.unlearn(model, m, margs, split, mcfg.trainer.args, sdir / m, args.seed, data.num_classes)
                total = time.perf_counter() - t0
                metrics = vision.evaluate(model, split, data.test, data.num_classes, args.seed)[0]
                row = {"method": m, **metrics, "avg_gap": avg_gap(metrics, rm, GAP_KEYS), "rte_s": seconds,
                       "rte_ratio": seconds / retrain_time if retrain_time else None, "dtheta": relative_change(refs["original"], model),
                       "method_args": margs, "trainer_args": OmegaConf.to_container(mcfg.trainer.args, resolve=True)}
                rows.append(row)
                print(f"  {m:<14} UA {row['UA']:6.2f} RA {row['RA']:6.2f} TA {row['TA']:6.2f} MIA {row['MIA']:6.2f} "
                      f"gap {row['avg_gap']:6.2f} RTE {seconds:7.1f}s ({row['rte_ratio'] or float('nan'):.3f}x retrain) "
                      f"dθ {row['dtheta']:.3g} (wall {total:.1f}s)", flush=True)
            rows.append({"method": "retrain", **rm, "avg_gap": 0.0, "rte_s": retrain_time, "rte_ratio": 1.0 if retrain_time else None})
            table = format_table([table_row(r) for r in rows], COLUMNS)
            print(f"\n## {setting}: forget {len(split.forget_idx)} of {len(data.train)} training images\n\n{table}\n", flush=True)
            report["settings"][setting] = {"selection": sel, "n_forget": len(split.forget_idx), "n_retain": len(split.retain_idx),
                                           "n_test": len(data.test), "rows": rows, "table": table}
            out.mkdir(parents=True, exist_ok=True)
            (out / "results.json").write_text(json.dumps(report, indent=1, default=str))
    print(f"results: {out / 'results.json'}")


if __name__ == "__main__":
    main()
