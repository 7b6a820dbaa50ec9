"""Retrain-free tuning (`obliviate tune`) against the shipped presets and against the oracle.

Two benchmarks, each a sequence of ``obliviate tune`` command lines run as subprocesses and timed:

- ``vision``: bench/cifar10.py's setting (CIFAR-10 subset, narrow CIFAR ResNet-18, random 10 %
  and class-wise forgetting). Per (setting, method) one search with ``tune.validate=true``
  (the preset and the tuned configuration scored by UA / RA / TA / MIA / Avg. Gap against the
  retrained model) and ``tune.record_oracle=true`` (every trial's true Avg. Gap, for the rank
  correlation; never used by the sampler). The first method of a setting trains the reference
  models (original and retrained, both without the held-out images); the others reuse them
  (``references/`` is linked).
- ``llm``: bench/tofu_smollm2.py's setting (SmolLM2-135M-Instruct on a TOFU subset, forget01).
  Its ``train`` step (target + retain model) runs first unless ``--train-dir`` points to an
  earlier one; each method's search validates against the retain model's TOFU_EVAL.json and
  records every trial's forget quality.

Both print and write ``<out>/results.md`` and ``<out>/results.json``: preset vs tuned (objective
and true metrics), the Spearman rank correlation between the retrain-free objective and the
true Avg. Gap / forget quality over all complete trials, and the minutes of each search.

Usage::

    .venv/bin/python bench/tune.py vision --data ../shared/data/cifar10_jpg --out bench_out/tune_cifar10 \
        [--methods GA,GradDiff,RL,SalUn --settings random,class --n-trials 20 --train-per-class 500 ...]
    .venv/bin/python bench/tune.py llm --out bench_out/tune_tofu [--methods NPO,SimNPO --n-trials 12] \
        [--train-dir bench_out/tofu_smollm2/train]

A search whose run dir already holds tune.json is skipped (rerun = resume; a cut search
continues its study). Extra ``key=value`` arguments are passed to every ``obliviate tune``.
``--methods ""`` runs the llm track's train step only; two processes with one method each
then share it (docs/benchmarks/tune.md ran NPO and SimNPO so, side by side on one GPU with
``--workers 3``). ``bench/tune_llm_terms.py`` scores the train step's target and retain
models with the objective (the gold-standard check of its terms).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))


def parse() -> tuple[argparse.Namespace, list[str]]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="track", required=True)
    v = sub.add_parser("vision", help="bench/cifar10.py's setting")
    v.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "cifar10_jpg"))
    v.add_argument("--out", default="bench_out/tune_cifar10")
    v.add_argument("--train-per-class", type=int, default=500)
    v.add_argument("--test-per-class", type=int, default=100)
    v.add_argument("--width", type=int, default=16)
    v.add_argument("--epochs", type=float, default=8)
    v.add_argument("--augment", action="store_true")
    v.add_argument("--seed", type=int, default=0)
    v.add_argument("--forget-class", type=int, default=3)
    v.add_argument("--settings", default="random,class")
    v.add_argument("--methods", default="GA,GradDiff,RL,SalUn")
    lm = sub.add_parser("llm", help="bench/tofu_smollm2.py's setting")
    lm.add_argument("--tofu", default=str(ROOT.parent / "shared" / "data" / "tofu"))
    lm.add_argument("--out", default="bench_out/tune_tofu")
    lm.add_argument("--train-dir", default=None, help="an earlier bench/tofu_smollm2.py train dir (target/, eval/retain/TOFU_EVAL.json)")
    lm.add_argument("--retain-authors", type=int, default=4)
    lm.add_argument("--eval-samples", type=int, default=40)
    lm.add_argument("--max-new-tokens", type=int, default=48)
    lm.add_argument("--train-epochs", type=float, default=5)
    lm.add_argument("--train-lr", default="1e-4")
    lm.add_argument("--unlearn-epochs", type=float, default=4, help="the preset's epochs (bench/tofu_smollm2.py's table)")
    lm.add_argument("--unlearn-lr", default="2e-5", help="the preset's learning rate (bench/tofu_smollm2.py's table)")
    lm.add_argument("--methods", default="NPO,SimNPO")
    lm.add_argument("--report-every-steps", type=int, default=30, help="intermediate objective (pruning) every N optimizer steps "
                    "(an evaluation costs about as much as 10-20 steps on SmolLM2)")
    for sp in (v, lm):
        sp.add_argument("--n-trials", type=int, default=20)
        sp.add_argument("--workers", type=int, default=1)
        sp.add_argument("--threads", type=int, default=1)
        sp.add_argument("--max-epochs", type=int, default=None, help="cap of the searched epochs (quick checks)")
    return p.parse_known_args()


def spearman(xs: list[float], ys: list[float]) -> float | None:
    """Spearman's rank correlation (``None`` with fewer than 3 pairs or a constant side)."""
    import numpy as np
    from scipy.stats import spearmanr

    pairs = [(x, y) for x, y in zip(xs, ys) if x is not None and y is not None and np.isfinite(x) and np.isfinite(y)]
    if len(pairs) < 3 or len({p[0] for p in pairs}) < 2 or len({p[1] for p in pairs}) < 2:
        return None
    return float(spearmanr([p[0] for p in pairs], [p[1] for p in pairs]).statistic)


def fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, str):
        return v
    return f"{v:.3g}" if abs(v) < 0.01 and v != 0 else f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}"


def run_tune(cmd: list[str], log: Path, env: dict) -> float:
    from tofu_smollm2 import run

    return run(cmd, log, env)


def search_summary(tune_dir: Path, oracle_key: str) -> dict:
    """Preset / tuned values, trial counts and the objective-vs-oracle rank correlation of one search."""
    data = json.loads((tune_dir / "tune.json").read_text())
    trials = [t for t in data["trials"] if t["state"] == "COMPLETE"]
    preset = next((t for t in data["trials"] if t.get("default")), None)
    obj = [t["value"] for t in trials]
    orc = [(t.get("oracle") or {}).get(oracle_key) for t in trials]
    states: dict[str, int] = {}
    for t in data["trials"]:
        states[t["state"].lower()] = states.get(t["state"].lower(), 0) + 1
    val = data.get("validation") or {}
    return {"preset_objective": None if preset is None else preset.get("value"), "tuned_objective": data.get("best_value"),
            "best_params": data.get("best_params"), "best_command": data.get("best_command"), "states": states,
            "default": val.get("default"), "tuned": val.get("tuned"), "spearman": spearman(obj, orc), "pairs": list(zip(obj, orc)),
            "trial_minutes": sum((t.get("seconds") or 0) for t in data["trials"]) / 60}


def space_cap(args: argparse.Namespace) -> list[str]:
    if not args.max_epochs:
        return []
    return [f"+tune.params={{trainer.args.num_train_epochs: {{type: int, low: 1, high: {args.max_epochs}}}}}"]


def vision(args: argparse.Namespace, extra: list[str], env: dict, exe: list[str], out: Path) -> dict:
    from cifar10 import forget_selections, setting_overrides

    report: dict = {"track": "vision", "settings": {}}
    for setting in args.settings.split(","):
        sel = forget_selections(args)[setting]
        rows, first = {}, None
        for m in [m for m in args.methods.split(",") if m]:
            tdir = out / setting / m
            if first is not None and not (tdir / "references").exists():
                tdir.mkdir(parents=True, exist_ok=True)
                (tdir / "references").symlink_to((first / "references").resolve(), target_is_directory=True)
            cmd = [*exe, "tune", *setting_overrides(args), *(f"{k}={v}" for k, v in sel.items()), f"trainer={m}",
                   f"paths.output_dir={tdir}", f"tune.n_trials={args.n_trials}", f"tune.workers={args.workers}", "tune.validate=true",
                   "tune.record_oracle=true", *space_cap(args), *extra]
            minutes = None
            if not (tdir / "tune.json").is_file():
                minutes = run_tune(cmd, out / f"{setting}_{m}.log", env) / 60
            first = first or tdir
            rows[m] = {**search_summary(tdir, "avg_gap"), "minutes": minutes, "command": shlex.join(cmd)}
        pooled = [p for r in rows.values() for p in r["pairs"]]
        report["settings"][setting] = {"selection": sel, "methods": rows, "spearman_pooled": spearman(*zip(*pooled)) if pooled else None}
    return report


def llm(args: argparse.Namespace, extra: list[str], env: dict, exe: list[str], out: Path) -> dict:
    from tofu_smollm2 import common, prepare, train_command

    tofu = out / "tofu"
    prepare(Path(args.tofu), tofu, args.retain_authors)
    train_dir = Path(args.train_dir).resolve() if args.train_dir else out / "train"
    report: dict = {"track": "llm", "methods": {}}
    if not (train_dir / "metrics.json").is_file():
        run_tune(train_command(args, exe, tofu, train_dir), out / "train.log", env)
    target = json.loads((train_dir / "metrics.json").read_text())["stages"]["target"]
    report["target"] = next(iter(target.get("eval", {}).values()), {}).get("summary", {})
    for m in [m for m in args.methods.split(",") if m]:
        tdir = out / m
        cmd = [*exe, "tune", *common(args, tofu), f"trainer={m}", f"model.model_args.pretrained_model_name_or_path={train_dir / 'target'}",
               f"retain_logs_path={train_dir / 'eval' / 'retain' / 'TOFU_EVAL.json'}", f"retrain_checkpoint={train_dir / 'retain'}",
               f"paths.output_dir={tdir}",
               "trainer.args.per_device_train_batch_size=4", "trainer.args.gradient_accumulation_steps=1",
               f"trainer.args.num_train_epochs={args.unlearn_epochs}", f"trainer.args.learning_rate={args.unlearn_lr}",
               f"tune.n_trials={args.n_trials}", f"tune.workers={args.workers}", "tune.record_oracle=true", f"tune.report_every_steps={args.report_every_steps}",
               *(["data.idk=" + str(tofu / "idontknow.jsonl")] if m == "IdkDPO" else []), *space_cap(args), *extra]
        minutes = None
        if not (tdir / "tune.json").is_file():
            minutes = run_tune(cmd, out / f"{m}.log", env) / 60
        s = search_summary(tdir, "forget_quality")
        s["spearman_neg_fq"] = spearman([a for a, _ in s["pairs"]], [None if b is None else -b for _, b in s["pairs"]])
        report["methods"][m] = {**s, "minutes": minutes, "command": shlex.join(cmd)}
    return report


def markdown(report: dict) -> str:
    lines = []
    if report["track"] == "vision":
        for setting, block in report["settings"].items():
            lines += [f"## {setting} forgetting ({block['selection']})", "",
                      "| method | preset objective | tuned objective | preset Avg. Gap | tuned Avg. Gap | trials | Spearman(objective, Avg. Gap) | minutes |",
                      "|---|---:|---:|---:|---:|---|---:|---:|"]
            for m, r in block["methods"].items():
                trials = ", ".join(f"{v} {k}" for k, v in sorted(r["states"].items()))
                lines.append(f"| {m} | {fmt(r['preset_objective'])} | {fmt(r['tuned_objective'])} | {fmt((r['default'] or {}).get('avg_gap'))} | "
                             f"{fmt((r['tuned'] or {}).get('avg_gap'))} | {trials} | {fmt(r['spearman'])} | {fmt(r['minutes'])} |")
            lines += ["", f"Spearman over all complete trials of the setting: {fmt(block['spearman_pooled'])}", ""]
    else:
        t = report.get("target", {})
        lines += [f"target model: forget quality {fmt(t.get('forget_quality'))}, model utility {fmt(t.get('model_utility'))}", "",
                  "| method | preset objective | tuned objective | preset FQ | tuned FQ | preset MU | tuned MU | tuned MU / target | trials | "
                  "Spearman(objective, −FQ) | minutes |", "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|"]
        for m, r in report["methods"].items():
            d, tu = r["default"] or {}, r["tuned"] or {}
            ratio = tu.get("model_utility") / t["model_utility"] if tu.get("model_utility") is not None and t.get("model_utility") else None
            trials = ", ".join(f"{v} {k}" for k, v in sorted(r["states"].items()))
            lines.append(f"| {m} | {fmt(r['preset_objective'])} | {fmt(r['tuned_objective'])} | {fmt(d.get('forget_quality'))} | "
                         f"{fmt(tu.get('forget_quality'))} | {fmt(d.get('model_utility'))} | {fmt(tu.get('model_utility'))} | {fmt(ratio)} | "
                         f"{trials} | {fmt(r['spearman_neg_fq'])} | {fmt(r['minutes'])} |")
    lines += ["", "commands:", ""]
    blocks = report["settings"].values() if report["track"] == "vision" else [report]
    lines += [f"    {r['command']}" for b in blocks for r in b["methods"].values()]
    return "\n".join(lines) + "\n"


def main() -> None:
    args, extra = parse()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads), "TOKENIZERS_PARALLELISM": "false"}
    exe = [str(Path(sys.executable).parent / "obliviate")]
    start = time.perf_counter()
    report = (vision if args.track == "vision" else llm)(args, extra, env, exe, out)
    report["command"] = " ".join([Path(sys.executable).name, *sys.argv])
    report["wall_minutes"] = (time.perf_counter() - start) / 60
    (out / "results.json").write_text(json.dumps(report, indent=1, default=str))
    text = f"command: `{report['command']}`\n\n" + markdown(report)
    (out / "results.md").write_text(text)
    print("\n" + text)


if __name__ == "__main__":
    main()
