"""Dual-importance unlearning pruning (seed 000) on SmolLM2 fine-tuned on TOFU authors, judged by
the TOFU metrics, against magnitude and random pruning at equal retain performance; then a
relearning check.

Needs the models of ``bench/tofu_smollm2.py`` (``--tofu-bench``: its ``train/target`` and the
retain model's ``train/eval/retain/TOFU_EVAL.json``; build them with
``bench/tofu_smollm2.py --steps prepare,train``). Forget = the two forget01 authors (40 QA),
retain = the four retain authors (80 QA).

1. ``sweep``: for every ranking (``--rankings``: ``dual (taylor)``, ``magnitude``, ``random``;
   also ``dual (lora)``, seed 000's rule; see ``bench/dual_prune.py``) the groups (KV-head groups, MLP
   channels) are scored once and pruned at each ``--ratios`` value (soft mask baked into
   zeroed weights, no training); forget / retain answer probability ``exp(-mean answer NLL)``
   is measured on the first ``--probe-samples`` (20) QA pairs of each. Per ranking
   the largest ratio whose retain probability stays >= ``--retain-floor`` x the target's is
   chosen (equal retain performance, the seed's ``min_retain_performance``).
2. ``recover``: the chosen pruned model + ``--recover-steps`` steps of full fine-tuning on the
   retain QA (AdamW, ``--recover-lr``, batch 8; the zeroed groups get exactly zero gradient
   and stay pruned); a ``no prune`` control gets the same steps. Each is saved and scored
   with ``obliviate eval eval=tofu`` (forget quality against the retain model, model
   utility, privleak; the settings of ``bench/tofu_smollm2.py``).
3. ``relearn``: every recovered model is fine-tuned further on the retain QA only
   (``--relearn-steps`` at ``--relearn-lr``); forget / retain answer probability is measured
   every ``--relearn-every`` steps: does the forget answer probability come back?

Run: ``.venv/bin/python bench/dual_prune_tofu.py [--out bench_out/dual_prune_tofu]``; prints and
writes ``<out>/results.md`` / ``results.json``; finished evaluations are reused (resume).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Subset

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dual_prune import prune_at, scores_for  # noqa: E402  (bench/dual_prune.py)

RANKINGS = ["dual (taylor)", "dual (lora)", "magnitude", "random"]
SUMMARY = ["forget_quality", "model_utility", "forget_truth_ratio", "forget_Q_A_Prob", "forget_Q_A_ROUGE", "retain_Q_A_Prob",
           "retain_Q_A_ROUGE", "privleak"]


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tofu-bench", default="bench_out/tofu_smollm2")
    p.add_argument("--out", default="bench_out/dual_prune_tofu")
    p.add_argument("--ratios", default="0.005,0.01,0.02,0.04")
    p.add_argument("--rankings", default="dual (taylor),magnitude,random", help=f"comma-separated, of: {', '.join(RANKINGS)}")
    p.add_argument("--retain-floor", type=float, default=0.9)
    p.add_argument("--recover-steps", type=int, default=5)
    p.add_argument("--recover-lr", type=float, default=2e-5)
    p.add_argument("--relearn-steps", type=int, default=10)
    p.add_argument("--relearn-lr", type=float, default=1e-4)
    p.add_argument("--relearn-every", type=int, default=5)
    p.add_argument("--eval-samples", type=int, default=40)
    p.add_argument("--probe-samples", type=int, default=20, help="forget / retain QA pairs (the first N of each) behind the "
                   "answer probabilities of the sweep, the recovery and the relearning curve")
    p.add_argument("--model", default="SmolLM2-135M-Instruct", help="model config of the --tofu-bench models")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args()


def slug(name: str) -> str:
    return name.replace(" (", "_").replace(")", "").replace(" ", "_")


def setup(args: argparse.Namespace) -> dict[str, Any]:
    from hydra import compose, initialize_config_module

    from obliviate.pipelines import llm

    bench = Path(args.tofu_bench).resolve()
    over = ["experiment=llm/tofu", f"model={args.model}", f"model.model_args.pretrained_model_name_or_path={bench / 'train' / 'target'}",
            f"paths.tofu={bench / 'tofu'}", "data.forget=TOFU_QA_FORGET01", "data.retain=TOFU_QA_RETAIN99"]
    with initialize_config_module("obliviate.configs", version_base="1.3"):
        cfg = compose(config_name="unlearn", overrides=over)
    paths = llm.text_data_paths(cfg)
    model, tok = llm.load_model(cfg)
    forget, retain = llm.load_split(cfg, "forget", tok, paths=paths), llm.load_split(cfg, "retain", tok, paths=paths)
    probe = {}
    for key, ds in (("forget", forget), ("retain", retain)):
        sub = Subset(ds, list(range(min(args.probe_samples, len(ds)))))
        sub.tokenizer = tok  # answer_nll builds its collator from it
        probe[key] = sub
    return {"model": model.eval(), "tok": tok, "forget": forget, "retain": retain, "probe": probe,
            "collator": llm.make_collator(cfg, tok), "bench": bench}


def probs(model: torch.nn.Module, env: dict[str, Any]) -> dict[str, float]:
    """Mean answer probability ``exp(-mean answer NLL)`` on the probe forget / retain QA pairs."""
    from obliviate.pipelines.llm import answer_nll

    return {k: float(np.mean(np.exp(-np.asarray(answer_nll(model, env["probe"][k], 16))))) for k in ("forget", "retain")}


def finetune(model: torch.nn.Module, env: dict[str, Any], steps: int, lr: float, seed: int, every: int = 0) -> list[dict[str, float]]:
    """Full fine-tuning on the retain QA (batch 8, AdamW, no weight decay); probabilities every ``every`` steps."""
    from obliviate.pipelines.prune_llm import lm_loss
    from obliviate.pipelines.prune_structured import take_batches

    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    curve = [{"step": 0, **probs(model, env)}] if every else []
    batches: list[Any] = []
    for step in range(1, steps + 1):
        if not batches:
            batches = take_batches(env["retain"], env["collator"], 8, None, seed + step)
        model.train()
        loss = lm_loss(model, batches.pop(0))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if every and step % every == 0:
            curve.append({"step": step, **probs(model, env)})
            print(f"    relearn step {step}: forget {curve[-1]['forget']:.3f} retain {curve[-1]['retain']:.3f}", flush=True)
    model.eval()
    return curve


def tofu_eval(model_dir: Path, out_dir: Path, env: dict[str, Any], args: argparse.Namespace) -> tuple[dict[str, Any], float, str]:
    bench = env["bench"]
    exe = str(Path(sys.executable).parent / "obliviate")
    cmd = [exe, "eval", "experiment=llm/tofu", f"model={args.model}", f"model.model_args.pretrained_model_name_or_path={model_dir}",
           f"paths.tofu={bench / 'tofu'}", "data.forget=TOFU_QA_FORGET01", "data.retain=TOFU_QA_RETAIN99", "eval=tofu",
           "forget_split=forget01", "holdout_split=holdout01", f"eval.tofu.max_samples={args.eval_samples}", "eval.tofu.max_new_tokens=48",
           f"retain_logs_path={bench / 'train' / 'eval' / 'retain' / 'TOFU_EVAL.json'}", f"paths.output_dir={out_dir}"]
    summary = out_dir / "eval" / "TOFU_SUMMARY.json"
    found = sorted(out_dir.glob("**/TOFU_SUMMARY.json"))
    if found:
        return json.loads(found[0].read_text()), 0.0, shlex.join(cmd)
    print("  $ " + shlex.join(cmd), flush=True)
    t0 = time.perf_counter()
    env_vars = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    with (out_dir.parent / f"{out_dir.name}.eval.log").open("w") as fh:
        proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env_vars)
    if proc.returncode:
        raise SystemExit(f"eval failed ({proc.returncode}); see {out_dir.parent / f'{out_dir.name}.eval.log'}")
    found = sorted(out_dir.glob("**/TOFU_SUMMARY.json"))
    return json.loads((found[0] if found else summary).read_text()), time.perf_counter() - t0, shlex.join(cmd)


def main() -> None:
    args = parse()
    torch.set_num_threads(args.threads)
    import transformers

    from obliviate.models.llm import save_causal_lm
    from obliviate.pipelines.prune_llm import lm_loss
    from obliviate.pipelines.prune_structured import take_batches

    transformers.logging.set_verbosity_error()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    env = setup(args)
    model = env["model"]
    base = probs(model, env)
    print(f"target: forget {base['forget']:.3f} retain {base['retain']:.3f}", flush=True)
    fb = take_batches(env["forget"], env["collator"], 4, None, args.seed)
    rb = take_batches(env["retain"], env["collator"], 4, len(fb), args.seed + 1)
    ratios = [float(r) for r in args.ratios.split(",")]
    level = args.retain_floor * base["retain"]
    res: dict[str, Any] = {"target": base, "level": level, "ratios": ratios, "rankings": {}, "args": vars(args)}
    chosen: dict[str, tuple[float, dict[str, torch.Tensor]]] = {}
    for ranking in args.rankings.split(","):
        t0 = time.perf_counter()
        scores = scores_for(ranking, model, fb, rb, lm_loss, args.seed)
        pts = []
        for r in ratios:
            m, n = prune_at(model, scores, r)
            pts.append({"ratio": r, "groups_pruned": n, **probs(m, env)})
            print(f"[{ranking}] ratio {r}: {n} groups, forget {pts[-1]['forget']:.3f} retain {pts[-1]['retain']:.3f}", flush=True)
            del m
        ok = [p for p in pts if p["retain"] >= level]
        pick = max(ok, key=lambda p: p["ratio"]) if ok else min(pts, key=lambda p: p["ratio"])
        chosen[ranking] = (pick["ratio"], scores)
        res["rankings"][ranking] = {"sweep": pts, "chosen_ratio": pick["ratio"], "sweep_s": time.perf_counter() - t0}
    res["sweep_s"] = time.perf_counter() - t_start

    rows = {"no prune": None, **chosen}
    for name, spec in rows.items():
        info = res["rankings"].setdefault(name, {})
        d = out / slug(name)
        if spec is None:
            m = copy.deepcopy(model)
        else:
            m, _ = prune_at(model, spec[1], spec[0])
        info["pruned"] = probs(m, env)
        t0 = time.perf_counter()
        finetune(m, env, args.recover_steps, args.recover_lr, args.seed)
        info["recover_s"] = time.perf_counter() - t0
        info["recovered"] = probs(m, env)
        print(f"[{name}] pruned {info['pruned']} -> recovered {info['recovered']}", flush=True)
        mdir = d / "model"
        if not (mdir / "config.json").exists():
            save_causal_lm(m, env["tok"], mdir)
        summary, secs, cmd = tofu_eval(mdir, d / "eval_run", env, args)
        info.update({"tofu": {k: summary.get(k) for k in SUMMARY}, "eval_s": secs, "eval_command": cmd})
        print(f"[{name}] TOFU: " + ", ".join(f"{k} {summary.get(k)}" for k in SUMMARY), flush=True)
        t0 = time.perf_counter()
        info["relearn"] = finetune(m, env, args.relearn_steps, args.relearn_lr, args.seed + 100, args.relearn_every)
        info["relearn_s"] = time.perf_counter() - t0
        del m
        (out / "results.json").write_text(json.dumps(res, indent=1))
    train = env["bench"] / "train" / "metrics.json"
    if train.exists():  # the unpruned target and retain models, as evaluated by bench/tofu_smollm2.py's train step
        stages = json.loads(train.read_text())["stages"]
        res["reference_models"] = {s: {k: next(iter(stages[s].get("eval", {}).values()), {}).get("summary", {}).get(k) for k in SUMMARY}
                                   for s in ("target", "retain") if s in stages}
    res["wall_s"] = time.perf_counter() - t_start
    res["load"] = os.getloadavg()
    (out / "results.json").write_text(json.dumps(res, indent=1))
    text = markdown(res)
    (out / "results.md").write_text(text)
    print("\n" + text)


def fmt(v: Any) -> str:
    if v is None:
        return "-"
    return f"{v:.3g}" if abs(v) < 0.01 and v != 0 else f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}"


def markdown(res: dict[str, Any]) -> str:
    rk = res["rankings"]
    sweep = [n for n in rk if "sweep" in rk[n]]
    lines = [f"target: forget {res['target']['forget']:.3f} / retain {res['target']['retain']:.3f} answer probability; "
             f"equal-retain level {res['level']:.3f}\n", "| ranking | " + " | ".join(f"{r:g}" for r in res["ratios"]) + " | chosen |",
             "|---|" + "---:|" * (len(res["ratios"]) + 1)]
    for n in sweep:
        lines.append(f"| {n} | " + " | ".join(f"{p['forget']:.3f} / {p['retain']:.3f}" for p in rk[n]["sweep"]) + f" | {rk[n]['chosen_ratio']:g} |")
    lines += ["", "| model | pruned f / r | recovered f / r | " + " | ".join(SUMMARY) + " | relearn forget prob |",
              "|---|---:|---:|" + "---:|" * (len(SUMMARY) + 1)]
    for stage, summ in (res.get("reference_models") or {}).items():
        lines.append(f"| {stage} model (fine-tuned, unpruned) | - | - | " + " | ".join(fmt(summ.get(k)) for k in SUMMARY) + " | - |")
    for n, v in rk.items():
        if "tofu" not in v:
            continue
        rel = " -> ".join(f"{c['forget']:.3f}" for c in v["relearn"])
        label = n if n == "no prune" else f"{n} @ {v['chosen_ratio']:g}"
        lines.append(f"| {label} | {v['pruned']['forget']:.3f} / {v['pruned']['retain']:.3f} | {v['recovered']['forget']:.3f} / "
                     f"{v['recovered']['retain']:.3f} | " + " | ".join(fmt(v["tofu"].get(k)) for k in SUMMARY) + f" | {rel} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
