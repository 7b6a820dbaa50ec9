"""Dual-importance unlearning pruning vs magnitude vs random pruning, at equal pruning ratios.

For a vision model (digits CNN trained in-process; forget = one class) and an LLM (tiny-llama
fine-tuned in-process on the synthetic fictitious authors, forget = forget10; or a saved HF
model with ``--llm-dir``), every ranking prunes the same number of structured groups per
group set (conv output channels; attention KV-head groups and MLP channels), for each ratio:

* ``dual (taylor)``: ``S = s_f / (s_r + eps)`` from separate forget and retain passes, each
  group scored by the squared gradient of a gate on its output summed over micro-batches
  (``prune_metric="taylor"``), highest ``S`` pruned first;
* ``dual (lora)``: the same ratio with LoRAPrune's element importance ``|G ⊙ (W + s·B·A)|``
  from the LoRA-estimated gradient after a LoRA warm-up (seed 000's rule, ``prune_metric="lora"``);
* ``dual (grad)``: the same with the exact weight gradient (``prune_metric="grad"``);
* ``magnitude``: lowest group magnitude ``|W|`` pruned first (plain compression);
* ``random``: a seeded random order.

All four go through :func:`obliviate.pruning.unlearning_prune` with ``unlearning_threshold=0``
and no safeguard, so only the ranking differs. Reported: forget and retain performance
(vision: accuracy on the forget / retain training images; LLM: answer probability
``exp(-mean answer NLL)`` averaged over forget / retain QA pairs) for each ratio, and, per
ranking, the lowest forget performance reached while retain performance stays at least
``--retain-floor`` x the unpruned model's (the seed's ``min_retain_performance``).

Run: ``.venv/bin/python bench/dual_prune.py [--out bench_out/dual_prune] [--threads 1]``;
writes ``<out>/results.json``, ``<out>/results.md`` and ``<out>/dual_prune.png``.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

RANKINGS = ["dual (taylor)", "dual (lora)", "dual (grad)", "magnitude", "random"]


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="bench_out/dual_prune")
    p.add_argument("--ratios", default="0,0.05,0.1,0.15,0.2,0.3,0.4,0.5")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tracks", default="vision,llm")
    p.add_argument("--forget-class", type=int, default=9)
    p.add_argument("--llm-dir", default=None, help="a saved HF causal LM (e.g. bench_out/tofu_smollm2/train/target) "
                   "instead of the in-process tiny-llama; needs --tofu")
    p.add_argument("--tofu", default=None, help="TOFU folder for --llm-dir (forget01 / retain99 files)")
    p.add_argument("--retain-floor", type=float, default=0.9)
    p.add_argument("--batches", type=int, default=None, help="micro-batches per sensitivity pass (default: all the forget "
                   "data; as many retain micro-batches)")
    p.add_argument("--vision-metric", choices=["accuracy", "probability"], default="accuracy",
                   help="vision performance in the tables: accuracy, or mean true-class probability (both are in results.json)")
    return p.parse_args()


# ----------------------------------------------------------------------------- rankings
def scores_for(ranking: str, model: nn.Module, fb: list, rb: list, loss_fn: Callable, seed: int) -> dict[str, torch.Tensor]:
    """``{group set key: S [n_groups]}``, highest pruned first, keyed as ``discover_groups(model)``."""
    from obliviate.pipelines.prune_structured import _map_keys
    from obliviate.pruning.groups import GroupMasks, discover_groups
    from obliviate.pruning.loraprune import group_importance
    from obliviate.pruning.unlearning import UnlearningPruneConfig, dual_sensitivity, lora_warmup

    groups = discover_groups(model)
    if ranking == "random":
        g = torch.Generator().manual_seed(seed)
        return {gs.key: torch.rand(gs.n_groups, generator=g) for gs in groups}
    if ranking == "magnitude":
        imp = group_importance(model, groups, "magnitude", norm="sum")  # the normalisation of the tables in dual_prune.md
        return {k: 1.0 / (v + 1e-12) for k, v in imp.items()}  # lowest magnitude = highest score
    if ranking == "dual (taylor)":
        _, _, dual = dual_sensitivity(model, fb, rb, loss_fn, UnlearningPruneConfig(prune_metric="taylor"), groups)
        return dual
    if ranking == "dual (grad)":
        work = copy.deepcopy(model)
        for q in work.parameters():
            q.requires_grad_(True)
        _, _, dual = dual_sensitivity(work, fb, rb, loss_fn, UnlearningPruneConfig(prune_metric="grad"), discover_groups(work))
        return dual
    if ranking == "dual (lora)":
        from obliviate.models.lora import apply_lora

        torch.manual_seed(seed)  # LoRA A init
        work = apply_lora(copy.deepcopy(model), r=8, alpha=16)
        mixed = [b for pair in zip(fb, rb) for b in pair]
        lora_warmup(work, mixed, loss_fn, steps=10, lr=1e-3)
        _, _, dual = dual_sensitivity(work, fb, rb, loss_fn, UnlearningPruneConfig(prune_metric="lora"), discover_groups(work))
        return _map_keys(dual, GroupMasks(groups))
    raise ValueError(ranking)


def prune_at(model: nn.Module, scores: dict[str, torch.Tensor], ratio: float) -> tuple[nn.Module, int]:
    """A pruned copy (the top ``floor(ratio * n)`` groups of each set by score) and the groups pruned."""
    from obliviate.pipelines.prune_structured import bake_masks
    from obliviate.pruning.groups import GroupMasks, discover_groups
    from obliviate.pruning.unlearning import unlearning_prune

    m = copy.deepcopy(model)
    if ratio <= 0:
        return m, 0
    masks = GroupMasks(discover_groups(m)).attach(m)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = unlearning_prune(m, scores, ratio, unlearning_threshold=0.0, masks=masks)
    bake_masks(m, masks)
    m.eval()
    return m, sum(len(v) for v in res.pruned.values())


def curves(model: nn.Module, fb: list, rb: list, loss_fn: Callable, evaluate: Callable[[nn.Module], dict[str, float]],
           ratios: list[float], seed: int, label: str) -> dict[str, Any]:
    base = evaluate(model)
    out: dict[str, Any] = {"unpruned": base, "rankings": {}}
    for ranking in RANKINGS:
        t0 = time.perf_counter()
        scores = scores_for(ranking, model, fb, rb, loss_fn, seed)
        points = []
        for r in ratios:
            m, n = prune_at(model, scores, r)
            points.append({"ratio": r, "groups_pruned": n, **evaluate(m)})
        out["rankings"][ranking] = {"points": points, "seconds": time.perf_counter() - t0}
        print(f"[{label}] {ranking:<12} " + "  ".join(f"{p['ratio']:.2f}: f {p['forget']:.3f} r {p['retain']:.3f}" for p in points), flush=True)
    return out


def forget_at_retain(points: list[dict[str, Any]], level: float) -> float | None:
    """Forget value where the curve's retain value first falls to ``level`` (linear interpolation
    between the two ratios around it); None if retain never falls that far."""
    pts = sorted(points, key=lambda p: p["ratio"])
    for a, b in zip(pts, pts[1:]):
        if a["retain"] >= level > b["retain"]:
            t = (a["retain"] - level) / (a["retain"] - b["retain"])
            return a["forget"] + t * (b["forget"] - a["forget"])
    return None


def best_under_floor(res: dict[str, Any], floor: float) -> dict[str, Any]:
    """Per ranking: lowest forget value among ratios with retain >= floor x unpruned retain."""
    limit = floor * res["unpruned"]["retain"]
    out = {}
    for name, info in res["rankings"].items():
        ok = [p for p in info["points"] if p["retain"] >= limit]
        best = min(ok, key=lambda p: p["forget"]) if ok else None
        out[name] = best
    return out


# ----------------------------------------------------------------------------- tracks
def vision_track(args: argparse.Namespace, ratios: list[float], out: Path) -> dict[str, Any]:
    from hydra import compose, initialize_config_module

    from obliviate.data import stack_collate
    from obliviate.pipelines import vision
    from obliviate.pipelines.prune_structured import _ce, take_batches

    with initialize_config_module("obliviate.configs", version_base="1.3"):
        cfg = compose(config_name="unlearn", overrides=["experiment=vision/digits", f"seed={args.seed}", "++train.args.disable_tqdm=true"])
    data = vision.load_data(cfg)
    split = vision.split_forget(data, {"forget_class": args.forget_class}, args.seed)
    model = vision.build_model(cfg, data, args.seed)
    t = vision.train_classifier(model, data.train, cfg.train.args, out / "digits_original", args.seed, data.num_classes)
    print(f"[vision] digits CNN trained in {t:.1f}s; forget class {args.forget_class}: {len(split.forget_idx)} images, "
          f"retain {len(split.retain_idx)}", flush=True)
    forget, retain = split.forget.with_augment(False), split.retain.with_augment(False)
    fb = take_batches(forget, stack_collate, 16, args.batches, args.seed)
    rb = take_batches(retain, stack_collate, 16, len(fb), args.seed + 1)

    def evaluate(m: nn.Module) -> dict[str, float]:
        f, r = vision.predict(m, forget), vision.predict(m, retain)
        acc = {"forget_acc": float((f["pred"] == f["label"]).mean()), "retain_acc": float((r["pred"] == r["label"]).mean())}
        prob = {"forget_prob": float(f["confidence"].mean()), "retain_prob": float(r["confidence"].mean())}
        key = "acc" if args.vision_metric == "accuracy" else "prob"
        return {"forget": {**acc, **prob}[f"forget_{key}"], "retain": {**acc, **prob}[f"retain_{key}"], **acc, **prob}

    res = curves(model, fb, rb, _ce, evaluate, ratios, args.seed, "vision")
    res.update({"model": "DigitsCNN (width 32)", "metric": args.vision_metric if args.vision_metric == "accuracy" else "true-class probability", "forget": f"digits class {args.forget_class}",
                "n_forget": len(split.forget_idx), "n_retain": len(split.retain_idx), "train_s": t})
    return res


def llm_track(args: argparse.Namespace, ratios: list[float], out: Path) -> dict[str, Any]:
    from hydra import compose, initialize_config_module

    from obliviate.pipelines import llm
    from obliviate.pipelines.prune_llm import lm_loss
    from obliviate.pipelines.prune_structured import take_batches

    if args.llm_dir:
        if not args.tofu:
            raise SystemExit("--llm-dir needs --tofu DIR (a TOFU folder with forget01.json and retain99.json)")
        overrides = ["experiment=llm/tofu", "model=SmolLM2-135M-Instruct", f"model.model_args.pretrained_model_name_or_path={args.llm_dir}",
                     f"paths.tofu={args.tofu}", "data.forget=TOFU_QA_FORGET01", "data.retain=TOFU_QA_RETAIN99"]
    else:
        overrides = ["experiment=llm/tofu_synthetic", f"seed={args.seed}", "++train.args.disable_tqdm=true"]
    with initialize_config_module("obliviate.configs", version_base="1.3"):
        cfg = compose(config_name="unlearn", overrides=overrides)
    paths = llm.text_data_paths(cfg)
    model, tokenizer = llm.load_model(cfg)
    forget = llm.load_split(cfg, "forget", tokenizer, paths=paths)
    retain = llm.load_split(cfg, "retain", tokenizer, paths=paths)
    collator = llm.make_collator(cfg, tokenizer)
    t = 0.0
    if not args.llm_dir:
        full = llm.load_split(cfg, "full", tokenizer, paths=paths)
        t, _ = llm.finetune(model, full, collator, cfg.train.args, out / "llm_target", args.seed)
        print(f"[llm] tiny-llama fine-tuned on {len(full)} synthetic QA pairs in {t:.1f}s", flush=True)
    model.eval()
    bs = 4
    fb = take_batches(forget, collator, bs, args.batches, args.seed)
    rb = take_batches(retain, collator, bs, len(fb), args.seed + 1)
    retain_probe = retain

    def evaluate(m: nn.Module) -> dict[str, float]:
        nf = llm.answer_nll(m, forget, 16)
        nr = llm.answer_nll(m, retain_probe, 16)
        return {"forget": float(np.mean(np.exp(-np.asarray(nf)))), "retain": float(np.mean(np.exp(-np.asarray(nr))))}

    res = curves(model, fb, rb, lm_loss, evaluate, ratios, args.seed, "llm")
    res.update({"model": args.llm_dir or "tiny-llama (in-process)", "metric": "answer probability", "forget": str(cfg.data.forget),
                "n_forget": len(forget), "n_retain_eval": len(retain_probe), "train_s": t})
    return res


# ----------------------------------------------------------------------------- output
def markdown(results: dict[str, Any], floor: float) -> str:
    lines = []
    for track, res in results["tracks"].items():
        lines.append(f"## {track}: {res['model']}, forget = {res['forget']} ({res['metric']})\n")
        ratios = [p["ratio"] for p in next(iter(res["rankings"].values()))["points"]]
        lines.append("| ranking | " + " | ".join(f"{r:g}" for r in ratios) + " |")
        lines.append("|---|" + "---:|" * len(ratios))
        for name, info in res["rankings"].items():
            lines.append(f"| {name} | " + " | ".join(f"{p['forget']:.3f} / {p['retain']:.3f}" for p in info["points"]) + " |")
        lines.append(f"\ncells: forget / retain {res['metric']} after pruning that fraction of the groups of every set "
                     f"(unpruned: {res['unpruned']['forget']:.3f} / {res['unpruned']['retain']:.3f}).\n")
        level = floor * res["unpruned"]["retain"]
        lines.append(f"At equal retain performance: forget {res['metric']} where retain falls to {floor:g} x unpruned "
                     f"({level:.3f}, interpolated between ratios), and the lowest forget value measured with retain >= that:\n")
        lines.append("| ranking | forget at equal retain | lowest forget (ratio, retain) |\n|---|---:|---:|")
        for name, best in best_under_floor(res, floor).items():
            at = forget_at_retain(res["rankings"][name]["points"], level)
            low = f"{best['forget']:.3f} ({best['ratio']:g}, {best['retain']:.3f})" if best else "-"
            lines.append(f"| {name} | {'-' if at is None else f'{at:.3f}'} | {low} |")
        lines.append("")
    return "\n".join(lines)


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tracks = list(results["tracks"].items())
    fig, axes = plt.subplots(1, len(tracks), figsize=(5.5 * len(tracks), 4.2), squeeze=False)
    for ax, (track, res) in zip(axes[0], tracks):
        for name, info in res["rankings"].items():
            pts = info["points"]
            ax.plot([p["retain"] for p in pts], [p["forget"] for p in pts], marker="o", label=name)
        u = res["unpruned"]
        ax.scatter([u["retain"]], [u["forget"]], color="black", zorder=5, label="unpruned")
        ax.set_xlabel(f"retain {res['metric']}")
        ax.set_ylabel(f"forget {res['metric']}")
        ax.set_title(f"{track}: {res['model']}", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("pruning ratio sweep: lower-right is better (forget drops, retain holds)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    args = parse()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    import transformers

    transformers.logging.set_verbosity_error()
    ratios = [float(r) for r in args.ratios.split(",")]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "ratios": ratios, "tracks": {}}
    start = time.perf_counter()
    for track in args.tracks.split(","):
        results["tracks"][track] = (vision_track if track == "vision" else llm_track)(args, ratios, out)
    results["wall_s"] = time.perf_counter() - start
    (out / "results.json").write_text(json.dumps(results, indent=1))
    text = markdown(results, args.retain_floor)
    (out / "results.md").write_text(text)
    plot(results, out / "dual_prune.png")
    print("\n" + text + f"\nwall time {results['wall_s']:.0f}s; plot: {out / 'dual_prune.png'}")


if __name__ == "__main__":
    main()
