"""LoRAPrune at real size: SmolLM2-135M-Instruct, dense vs 30% vs 50% structured sparsity, on CPU.

Steps (``--steps prepare,prune,measure``):

1. ``prepare``: ``<out>/tofu``, a TOFU folder whose ``full.json`` holds the LoRAPrune training
   QA pairs (``--train-rows``, default full.json rows 1000-2599 = authors 51-130: none of them
   is in the evaluation rows) and whose other splits link to the original files, plus
   ``<out>/heldout.txt``: the answers of authors 151-160 (rows 3000-3199) as plain text.
2. ``prune``: one ``obliviate prune pruning=loraprune`` per target ratio (``--ratios``, default
   0, 0.3, 0.5; ratio 0 = the same LoRA fine-tuning without pruning, the fair baseline for
   quality), run as a subprocess and timed.
3. ``measure`` (one process): the dense model (the GGUF), and every saved model, reloaded
   with obliviate's loader. Speed, alternating the models round-robin (``--rounds``) on one
   torch thread: median forward latency of a ``4 x 128``-token batch and greedy generation
   tokens/s (``--gen-tokens`` new tokens, forced length, batch 1 and batch 8). Quality, with
   obliviate's TOFU evaluator (``eval=tofu``): answer probability, NLL and ROUGE-L recall of
   greedy answers (at most 48 new tokens) on the first ``--eval-samples`` retain_perturbed
   questions (authors 1-2) and real-author questions (normalised probability, truth ratio),
   and perplexity on ``heldout.txt`` (token-weighted, blocks of 256 tokens).

Prints and writes ``<out>/results.md`` / ``results.json`` with ratios against the dense model.

Run: ``.venv/bin/python bench/prune_realsize.py [--out bench_out/prune_realsize] [--threads 1]``.
A prune run whose directory has ``metrics.json`` is skipped (rerun = resume).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
LINKED = ["retain_perturbed.json", "real_authors_perturbed.json", "world_facts_perturbed.json"]


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tofu", default=str(ROOT.parent / "shared" / "data" / "tofu"))
    p.add_argument("--out", default="bench_out/prune_realsize")
    p.add_argument("--ratios", default="0,0.3,0.5")
    p.add_argument("--train-rows", default="1000:2600", help="full.json row range of the training QA pairs")
    p.add_argument("--heldout-rows", default="3000:3200", help="full.json rows whose answers form heldout.txt")
    p.add_argument("--prune-steps", type=int, default=120)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", default="1e-3")
    p.add_argument("--extra", default="", help="extra overrides for every prune run (space separated)")
    p.add_argument("--tag", default="", help="suffix of the run names (p50<tag>), e.g. for runs with --extra overrides")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--gen-tokens", type=int, default=64)
    p.add_argument("--eval-samples", type=int, default=40)
    p.add_argument("--ppl-blocks", type=int, default=16)
    p.add_argument("--steps", default="prepare,prune,measure")
    p.add_argument("--equivalence", action="store_true", help="only compare soft-masked and physically pruned SmolLM2 "
                   "logits in float32 and float64 (50%% of the MLP channels + one KV group per layer, random) and exit")
    return p.parse_args()


def rows(path: Path) -> list[str]:
    return [line for line in path.read_text(encoding="utf-8").split("\n") if line.strip()]


def span(text: str) -> slice:
    a, b = (int(x) for x in text.split(":"))
    return slice(a, b)


def prepare(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    src = Path(args.tofu)
    full = rows(src / "full.json")
    tofu = out / "tofu"
    tofu.mkdir(parents=True, exist_ok=True)
    train = full[span(args.train_rows)]
    (tofu / "full.json").write_text("\n".join(train) + "\n", encoding="utf-8")
    for name in LINKED:
        link = tofu / name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to((src / name).resolve())
    held = [json.loads(r)["answer"] for r in full[span(args.heldout_rows)]]
    (out / "heldout.txt").write_text("\n".join(held) + "\n", encoding="utf-8")
    return {"train_rows": args.train_rows, "n_train": len(train), "heldout_rows": args.heldout_rows, "heldout_chars": sum(map(len, held))}


def prune_cmd(args: argparse.Namespace, out: Path, ratio: float) -> list[str]:
    exe = str(Path(sys.executable).parent / "obliviate")
    return [exe, "prune", "experiment=llm/tofu", "model=SmolLM2-135M-Instruct", f"paths.tofu={out / 'tofu'}",
            "data.full=TOFU_QA_full", "data.forget=null", "data.retain=null", "data.eval=null", "pruning=loraprune",
            f"pruning.target_ratio={ratio}", f"pruning.steps={args.prune_steps}", f"pruning.batch_size={args.batch_size}",
            f"pruning.lr={args.lr}", f"paths.output_dir={out / run_name(ratio)}", *args.extra.split()]


TAG = ""


def run_name(ratio: float) -> str:
    return f"p{round(100 * ratio):02d}{TAG}"


def run(cmd: list[str], log: Path, env: dict) -> float:
    print("$ " + shlex.join(cmd), flush=True)
    start = time.perf_counter()
    with log.open("w") as fh:
        proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)
    if proc.returncode:
        raise SystemExit(f"command failed (exit {proc.returncode}); see {log}")
    seconds = time.perf_counter() - start
    print(f"  done in {seconds / 60:.1f} min", flush=True)
    return seconds


# ----------------------------------------------------------------------------- measure
def load(path: str | None) -> tuple[Any, Any, Any]:
    from hydra import compose, initialize_config_module

    from obliviate.pipelines import llm

    over = ["experiment=llm/tofu", "model=SmolLM2-135M-Instruct"]
    if path:
        over.append(f"model.model_args.pretrained_model_name_or_path={path}")
    with initialize_config_module("obliviate.configs", version_base="1.3"):
        cfg = compose(config_name="unlearn", overrides=over)
    model, tok = llm.load_model(cfg)
    return model.eval(), tok, cfg


def speed(models: dict[str, Any], tok: Any, args: argparse.Namespace, text: str) -> dict[str, dict[str, float]]:
    import torch

    ids = tok(text, add_special_tokens=False)["input_ids"]
    fwd = torch.tensor([ids[i * 128:(i + 1) * 128] for i in range(4)])  # [4, 128]
    prompt = tok.apply_chat_template([{"role": "user", "content": "Tell me about the history of the printing press."}],
                                     add_generation_prompt=True, return_tensors="pt", return_dict=True)
    p1 = prompt["input_ids"]  # [1, p]
    p8 = p1.repeat(8, 1)
    t = {name: {"fwd": [], "gen1": [], "gen8": []} for name in models}
    gen = dict(max_new_tokens=args.gen_tokens, min_new_tokens=args.gen_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
    with torch.no_grad():
        for m in models.values():  # warm-up
            m(input_ids=fwd[:1, :16])
            m.generate(input_ids=p1, attention_mask=torch.ones_like(p1), **{**gen, "max_new_tokens": 4, "min_new_tokens": 4})
        for r in range(args.rounds):
            for name, m in models.items():
                s = time.perf_counter()
                m(input_ids=fwd)
                t[name]["fwd"].append(time.perf_counter() - s)
                s = time.perf_counter()
                out = m.generate(input_ids=p1, attention_mask=torch.ones_like(p1), **gen)
                t[name]["gen1"].append(time.perf_counter() - s)
                assert out.shape[1] - p1.shape[1] == args.gen_tokens
                s = time.perf_counter()
                m.generate(input_ids=p8, attention_mask=torch.ones_like(p8), **gen)
                t[name]["gen8"].append(time.perf_counter() - s)
            print(f"  speed round {r + 1}/{args.rounds}: " + ", ".join(f"{n} {t[n]['gen1'][-1]:.2f}s" for n in models), flush=True)
    return {n: {"forward_ms": 1000 * statistics.median(v["fwd"]), "gen_tok_s_bs1": args.gen_tokens / statistics.median(v["gen1"]),
                "gen_tok_s_bs8": 8 * args.gen_tokens / statistics.median(v["gen8"])} for n, v in t.items()}


def perplexity(model: Any, tok: Any, path: Path, blocks: int) -> float:
    import math

    import torch

    from obliviate.data.text.plain import TextFileDataset

    ds = TextFileDataset(path, tok, block_size=256, max_blocks=blocks)
    nll, n = 0.0, 0
    with torch.no_grad():
        for i in range(len(ds)):
            x = ds[i]["input_ids"][None]
            loss = model(input_ids=x, labels=x).loss
            nll += float(loss) * (x.shape[1] - 1)
            n += x.shape[1] - 1
    return math.exp(nll / n)


def quality(model: Any, tok: Any, cfg: Any, args: argparse.Namespace, out: Path, name: str) -> dict[str, float]:
    import numpy as np
    from hydra import compose, initialize_config_module

    from obliviate.pipelines.llm_eval import evaluate, prepare_evaluations

    over = ["experiment=llm/tofu", "model=SmolLM2-135M-Instruct", "eval=tofu", f"paths.tofu={out / 'tofu'}",
            f"eval.tofu.max_samples={args.eval_samples}", "eval.tofu.max_new_tokens=48", "eval.tofu.splits.forget=null",
            "eval.tofu.splits.holdout=null", "eval.tofu.splits.wf=null"]
    with initialize_config_module("obliviate.configs", version_base="1.3"):
        ecfg = compose(config_name="eval", overrides=over)
    ev = prepare_evaluations(ecfg, tok, {"cache_dir": None})[0]
    res = evaluate(model, tok, ev, out / "eval" / name, retain_logs_path=None)
    s, r = res["summary"], res["results"]
    nll = [v["avg_loss"] for v in r["retain_Q_A_Prob"]["value_by_index"].values()]  # mean answer-token NLL per question
    return {"retain_prob": s["retain_Q_A_Prob"], "retain_nll": float(np.mean(nll)),
            "retain_rouge": s["retain_Q_A_ROUGE"], "retain_truth_ratio": s.get("retain_Truth_Ratio"),
            "ra_prob_norm": s.get("ra_Q_A_Prob_normalised"), "ra_rouge": s["ra_Q_A_ROUGE"], "ra_truth_ratio": s.get("ra_Truth_Ratio"),
            "heldout_ppl": perplexity(model, tok, out / "heldout.txt", args.ppl_blocks), "eval_s": res["eval_time_s"]}


def measure(args: argparse.Namespace, out: Path, ratios: list[float]) -> dict[str, Any]:
    import torch

    torch.set_num_threads(args.threads)
    dense, tok, cfg = load(None)
    models = {"dense": dense}
    info: dict[str, Any] = {"dense": {"params": sum(p.numel() for p in dense.parameters())}}
    for r in ratios:
        mdir = out / run_name(r) / "pruned"
        m, _, _ = load(str(mdir))
        models[run_name(r)] = m
        met = json.loads((out / run_name(r) / "metrics.json").read_text())
        info[run_name(r)] = {"params": sum(p.numel() for p in m.parameters()), "group_sparsity": met["pruning"]["group_sparsity"],
                             "kept_per_layer_example": {k: v for k, v in list(met["pruning"]["kept_per_layer"].items())[:2]},
                             "prune_s": met["pruning"]["seconds"], "wall_time_s": met["wall_time_s"]}
    text = (out / "heldout.txt").read_text(encoding="utf-8")
    timed = {n: m for n, m in models.items() if not n.startswith("p00")}  # p00 has the dense shapes
    t0 = time.perf_counter()
    sp = speed(timed, tok, args, text)
    speed_s = time.perf_counter() - t0
    for n, v in sp.items():
        info[n].update(v)
    for n, m in models.items():
        print(f"  quality {n} ...", flush=True)
        info[n].update(quality(m, tok, cfg, args, out, n))
        print("   ", {k: round(v, 4) if isinstance(v, float) else v for k, v in info[n].items() if k != "kept_per_layer_example"}, flush=True)
    return {"models": info, "speed_s": speed_s}


def equivalence() -> dict[str, float]:
    """Max |logit| differences: soft mask vs physical removal, float32 and float64 (item: rounding or bug?)."""
    import copy

    import torch

    from obliviate.pruning.groups import GroupMasks, discover_groups, remove_pruned_groups

    model, tok, _ = load(None)
    x = tok(["The capital of France is Paris, and the capital of Germany is",
             "Once upon a time there was a little girl who lived in a village near the forest."], return_tensors="pt", padding=True)
    g = torch.Generator().manual_seed(0)
    keep = {}
    for gs in discover_groups(model):
        k = torch.ones(gs.n_groups, dtype=torch.bool)
        k[torch.randperm(gs.n_groups, generator=g)[: gs.n_groups // 2 if gs.kind == "mlp" else 1]] = False
        keep[gs.key] = k

    def logits(dtype: Any) -> tuple[Any, Any, Any]:
        m = copy.deepcopy(model).to(dtype)
        with torch.no_grad():
            dense = m(**x).logits
            masks = GroupMasks(discover_groups(m), keep).attach(m)
            soft = m(**x).logits
            remove_pruned_groups(m, masks)
            return dense, soft, m(**x).logits

    d32, s32, h32 = logits(torch.float32)
    d64, s64, h64 = logits(torch.float64)
    mask = x["attention_mask"].bool()

    def diff(a: Any, b: Any) -> float:
        return float((a.double() - b.double()).abs()[mask].max())

    out = {"soft_vs_physical_fp32": diff(s32, h32), "soft_vs_physical_fp64": diff(s64, h64), "soft_fp32_vs_fp64": diff(s32, s64),
           "physical_fp32_vs_fp64": diff(h32, h64), "dense_fp32_vs_fp64": diff(d32, d64), "max_abs_logit": float(s64.abs()[mask].max())}
    for k, v in out.items():
        print(f"{k:>24}: {v:.3g}")
    return out


# ----------------------------------------------------------------------------- output
COLS = [("params", "params (M)", lambda v: f"{v / 1e6:.1f}"), ("forward_ms", "forward 4x128 (ms)", lambda v: f"{v:.0f}"),
        ("gen_tok_s_bs1", "gen tok/s bs1", lambda v: f"{v:.1f}"), ("gen_tok_s_bs8", "gen tok/s bs8", lambda v: f"{v:.1f}"),
        ("retain_prob", "retain prob", lambda v: f"{v:.3f}"), ("retain_nll", "retain NLL", lambda v: f"{v:.3f}"),
        ("retain_rouge", "retain ROUGE", lambda v: f"{v:.3f}"), ("ra_prob_norm", "real-author prob (norm.)", lambda v: f"{v:.3f}"),
        ("ra_rouge", "real-author ROUGE", lambda v: f"{v:.3f}"), ("heldout_ppl", "held-out ppl", lambda v: f"{v:.1f}")]


def markdown(res: dict[str, Any]) -> str:
    ms = res["models"]
    head = "| model | " + " | ".join(c[1] for c in COLS) + " |\n|---|" + "---:|" * len(COLS)
    lines = [head]
    for n, v in ms.items():
        lines.append(f"| {n} | " + " | ".join(f(v[k]) if v.get(k) is not None else "-" for k, _, f in COLS) + " |")
    d = ms["dense"]
    lines.append("\nratios to the dense model:\n")
    lines.append("| model | params | forward speed-up | gen speed-up bs1 | gen speed-up bs8 | retain prob | held-out ppl |\n|---|---:|---:|---:|---:|---:|---:|")
    for n, v in ms.items():
        if n == "dense":
            continue
        sp = [f"{d[k] / v[k]:.2f}x" if k == "forward_ms" and k in v else f"{v[k] / d[k]:.2f}x" if k in v else "-"
              for k in ("forward_ms", "gen_tok_s_bs1", "gen_tok_s_bs8")]
        lines.append(f"| {n} | {v['params'] / d['params']:.2f} | {' | '.join(sp)} | {v['retain_prob'] / d['retain_prob']:.2f}x | "
                     f"{v['heldout_ppl'] / d['heldout_ppl']:.2f}x |")
    return "\n".join(lines)


def main() -> None:
    global TAG
    args = parse()
    TAG = args.tag
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if args.equivalence:
        import torch

        torch.set_num_threads(args.threads)
        (out / "equivalence.json").write_text(json.dumps(equivalence(), indent=1))
        return
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads), "TOKENIZERS_PARALLELISM": "false"}
    os.environ.update({k: env[k] for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "TOKENIZERS_PARALLELISM")})
    ratios = [float(r) for r in args.ratios.split(",")]
    steps = args.steps.split(",")
    times_path = out / "times.json"
    times = json.loads(times_path.read_text()) if times_path.exists() else {}
    if "prepare" in steps or not (out / "tofu").exists():
        times["prepare_info"] = prepare(args, out)
    commands = {}
    for r in ratios:
        cmd = prune_cmd(args, out, r)
        commands[run_name(r)] = shlex.join(cmd)
        if "prune" in steps and not (out / run_name(r) / "metrics.json").exists():
            times[run_name(r)] = run(cmd, out / f"{run_name(r)}.log", env)
            times_path.write_text(json.dumps(times, indent=1))
    times_path.write_text(json.dumps(times, indent=1))
    if "measure" not in steps:
        return
    t0 = time.perf_counter()
    res = measure(args, out, ratios)
    res.update({"measure_s": time.perf_counter() - t0, "times": times, "commands": commands, "load": os.getloadavg()})
    (out / f"results{TAG}.json").write_text(json.dumps(res, indent=1))
    text = markdown(res) + "\n\ncommands:\n\n" + "\n".join(f"    {c}" for c in commands.values()) + "\n"
    (out / f"results{TAG}.md").write_text(text)
    print("\n" + text)


if __name__ == "__main__":
    main()
