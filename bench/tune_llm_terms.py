"""The retrain-free LLM objective's terms on the target and the retain model (the gold standard).

A retrain-free objective should score the retain model (never trained on the forget authors:
what unlearning should look like) near 0 and the target model (trained on them) high. This
scores both models of a ``bench/tune.py llm`` train dir with the objective of
``obliviate.metrics.retrain_free.llm_objective`` (like-for-like terms only) and, in the same
process on the same teacher-forced values, with the earlier definition that compared the
forget set's paraphrased / perturbed answers with the holdout's *original* answers (TOFU's
holdout files have no paraphrased / perturbed answers). Prints the terms and the ratio
target / retain of each distance (higher = the objective separates the two better).

Run: ``.venv/bin/python bench/tune_llm_terms.py --out bench_out/tune_tofu_cpu`` (after
``bench/tune.py llm --out bench_out/tune_tofu_cpu --methods ""`` trained the two models).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_module("obliviate.configs", version_base="1.3"):
        cfg = hydra_compose(config_name="tune", overrides=overrides)
    GlobalHydra.instance().clear()
    return cfg


def earlier_terms(results: dict) -> dict:
    """The earlier definition: paraphrased / perturbed forget answers vs the holdout's answers."""
    from obliviate.metrics.retrain_free import _scores, ks_statistic

    p_h = _scores(results, "holdout_Q_A_Prob")
    terms = {"ks_prob": ks_statistic(_scores(results, "forget_Q_A_Prob"), p_h),
             "ks_para": ks_statistic(_scores(results, "forget_Q_A_PARA_Prob"), p_h),
             "ks_pert": ks_statistic(_scores(results, "forget_Q_A_PERT_Prob"), p_h)}
    return {**terms, "distance": sum(terms.values()) / 3}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="bench_out/tune_tofu_cpu", help="a bench/tune.py llm --out folder (tofu/ and train/ inside)")
    p.add_argument("--eval-samples", type=int, default=40)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    from tofu_smollm2 import common

    from obliviate.metrics.retrain_free import llm_objective, teacher_forced_results, teacher_forced_utility
    from obliviate.pipelines import llm_eval, llm_stages
    from obliviate.pipelines.common import plain
    from obliviate.pipelines.tune_llm import holdout_spec

    out = Path(args.out).resolve()
    ns = argparse.Namespace(eval_samples=args.eval_samples, max_new_tokens=48)
    rows, target_u = {}, None
    for name in ("target", "retain"):
        cfg = compose([*common(ns, out / "tofu"), "trainer=NPO", f"model.model_args.pretrained_model_name_or_path={out / 'train' / name}",
                       f"paths.output_dir={out / 'terms'}"])
        start = time.perf_counter()
        model, tokenizer = llm_stages.load_model(cfg)
        eval_name, ecfg = next(iter(llm_eval.selected_evaluators(cfg).items()))
        obj_cfg = {**ecfg, "_name": eval_name, "max_samples": ecfg.get("max_samples"),
                   "splits": {**(ecfg.get("splits") or {}), "holdout": holdout_spec(cfg, ecfg)}}
        splits, _ = llm_eval.load_eval_splits(obj_cfg, tokenizer, plain(cfg.model.get("template_args")) or {}, None)
        results = teacher_forced_results(model, tokenizer, splits, batch_size=int(ecfg.get("batch_size", 8)))
        utility = teacher_forced_utility(results)
        target_u = utility if target_u is None else target_u
        rows[name] = {"now": llm_objective(results, target_u), "earlier": earlier_terms(results), "seconds": time.perf_counter() - start}
    header = ("| model | KS(p) | KS(para vs holdout answers) | KS(pert vs holdout answers) | distance now (like for like) | "
              "distance earlier | utility |")
    lines = [header, "|---|---:|---:|---:|---:|---:|---:|"]
    for name, r in rows.items():
        e, n = r["earlier"], r["now"]
        lines.append(f"| {name} | {n['ks_prob']:.3f} | {e['ks_para']:.3f} | {e['ks_pert']:.3f} | {n['distance']:.3f} | {e['distance']:.3f} | "
                     f"{n['utility']:.3f} |")
    sep_now = rows["target"]["now"]["distance"] / max(rows["retain"]["now"]["distance"], 1e-9)
    sep_earlier = rows["target"]["earlier"]["distance"] / max(rows["retain"]["earlier"]["distance"], 1e-9)
    lines += ["", f"target / retain distance: now {sep_now:.2f}x, earlier {sep_earlier:.2f}x"]
    text = "\n".join(lines) + "\n"
    (out / "terms.json").write_text(json.dumps(rows, indent=1, default=str))
    (out / "terms.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
