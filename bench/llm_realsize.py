"""The LLM track at real size on CPU: the seed-001 command and ``obliviate eval``, timed by phase.

(a) ``seed001``: the seed-001 command with a 3-step cap, as a user types it, on SmolLM2-135M-
    Instruct and the full TOFU forget10 / retain90 / forget10_perturbed files::

        obliviate unlearn --config-name=unlearn.yaml model=SmolLM2-135M-Instruct trainer=GradDiff \\
            trainer.method_args.alpha=0.5 data.forget=TOFU_QA_FORGET10 data.retain=TOFU_QA_RETAIN90 \\
            data.eval=TOFU_QA_FORGET10_P collator=DataCollatorForSupervisedDataset \\
            paths.tofu=../shared/data/tofu trainer.args.max_steps=3

    split into load (model + tokenizer), data (read + tokenise), probes (the before/after answer
    NLL of ``probe_samples`` rows per split), steps (the 3 optimizer steps) and save. The baseline
    is what the probes cost before they were bounded: every row of every split, before and after,
    extrapolated from the measured per-row probe cost (``--probe-all`` runs it instead).

(b) ``eval``: ``obliviate eval model=SmolLM2-135M-Instruct eval=tofu forget_split=forget01
    holdout_split=holdout01 eval.tofu.max_new_tokens=64`` (all five splits, ROUGE at 64 new
    tokens), split into teacher-forced passes and generation, with the model forward calls of
    each and the generated tokens. ``--naive`` also runs bench/eval_cost.py's one-pass-per-metric
    baseline (the reference framework's structure, batch 32) on the same tokenised splits in the
    same process and prints the ratio.

Both run the real command in process (``obliviate.cli.main``), one torch thread. Wall time and
process CPU time are both reported, with the machine's load average: on a shared machine wall
time grows with the load, CPU time much less.

Run (from the repository root)::

    python bench/llm_realsize.py --part all [--naive] [--out bench_out/llm_realsize]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import sys
import tempfile
import time
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch

SEED_001 = ["--config-name=unlearn.yaml", "model=SmolLM2-135M-Instruct", "trainer=GradDiff", "trainer.method_args.alpha=0.5",
            "data.forget=TOFU_QA_FORGET10", "data.retain=TOFU_QA_RETAIN90", "data.eval=TOFU_QA_FORGET10_P",
            "collator=DataCollatorForSupervisedDataset"]


class Phases:
    """Wall and CPU seconds per named phase (nested calls of one phase count once)."""

    def __init__(self) -> None:
        self.wall: dict[str, float] = defaultdict(float)
        self.cpu: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self._active: set[str] = set()

    def wrap(self, owner: Any, name: str, phase: str) -> None:
        original = getattr(owner, name)

        @functools.wraps(original)
        def timed(*args: Any, **kwargs: Any) -> Any:
            if phase in self._active:
                return original(*args, **kwargs)
            self._active.add(phase)
            w, c = time.perf_counter(), time.process_time()
            try:
                return original(*args, **kwargs)
            finally:
                self.wall[phase] += time.perf_counter() - w
                self.cpu[phase] += time.process_time() - c
                self.calls[phase] += 1
                self._active.discard(phase)

        setattr(owner, name, timed)


def load() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def machine() -> dict[str, Any]:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__}


def _run_cli(args: list[str]) -> tuple[float, float]:
    from obliviate.cli import main

    w, c = time.perf_counter(), time.process_time()
    main(args)
    return time.perf_counter() - w, time.process_time() - c


def _table(rows: list[tuple[str, float, float]], total: tuple[float, float]) -> str:
    out = [f"{'phase':<34}{'wall s':>10}{'CPU s':>10}{'share':>8}"]
    for name, wall, cpu in rows:
        out.append(f"{name:<34}{wall:>10.1f}{cpu:>10.1f}{100 * wall / max(total[0], 1e-9):>7.0f}%")
    out.append(f"{'total (the whole command)':<34}{total[0]:>10.1f}{total[1]:>10.1f}")
    return "\n".join(out)


# ----------------------------------------------------------------------------- (a) seed-001
def part_a(tofu: str, out: Path, probe_all: bool, probe_samples: int | None = None) -> dict[str, Any]:
    from obliviate.engine.trainer import UnlearningTrainer
    from obliviate.pipelines import llm

    ph = Phases()
    ph.wrap(llm, "load_model", "load (model + tokenizer)")
    ph.wrap(llm, "load_split", "data (read + tokenise)")
    ph.wrap(llm, "measure", "probes (NLL before + after)")
    ph.wrap(UnlearningTrainer, "train", "steps (3 optimizer steps)")
    ph.wrap(llm, "save_model_dir", "save")
    run_dir = out / "seed001"
    cache = Path(tempfile.mkdtemp(prefix="tok_cache_", dir=out))  # cold tokenisation, as a first run
    args = ["unlearn", *SEED_001, f"paths.tofu={tofu}", "trainer.args.max_steps=3", f"paths.output_dir={run_dir}",
            f"paths.cache_dir={cache}", "overwrite=true", *(["probe_samples=null"] if probe_all else []),
            *([f"probe_samples={probe_samples}"] if probe_samples and not probe_all else [])]
    load_before = load()
    total = _run_cli(args)
    m = json.loads((run_dir / "metrics.json").read_text())
    rows = [(k, ph.wall[k], ph.cpu[k]) for k in ph.wall]
    rows.append(("other (compose, pairing, manifest)", total[0] - sum(ph.wall.values()), total[1] - sum(ph.cpu.values())))
    probed = sum(v["n"] for v in m["probes"].values())
    rows_all = sum(v["of"] for v in m["probes"].values())
    per_row = ph.cpu["probes (NLL before + after)"] / max(1, 2 * probed)
    per_row_wall = ph.wall["probes (NLL before + after)"] / max(1, 2 * probed)
    res = {"command": "obliviate unlearn " + " ".join(args[1:]), "load_before": load_before, "load_after": load(),
           "phases": {k: {"wall_s": w, "cpu_s": c} for k, w, c in rows}, "total_wall_s": total[0], "total_cpu_s": total[1],
           "probes": m["probes"], "probed_rows": probed, "rows_in_sets": rows_all,
           "all_rows_probes_estimate": {"wall_s": per_row_wall * 2 * rows_all, "cpu_s": per_row * 2 * rows_all},
           "log_history_steps": max((h.get("step", 0) for h in m["log_history"]), default=0)}
    print("\n== (a) seed-001 command, trainer.args.max_steps=3, forget10 / retain90 "
          f"(load {load_before} -> {res['load_after']})\n{_table(rows, total)}")
    print(f"probes: {probed} rows of {rows_all} per measurement ({json.dumps(m['probes'])}); probing every row before and "
          f"after (the unbounded probes) would take ~{res['all_rows_probes_estimate']['wall_s'] / 60:.1f} min wall / "
          f"{res['all_rows_probes_estimate']['cpu_s'] / 60:.1f} CPU-min at the measured per-row cost")
    return res


# ----------------------------------------------------------------------------- (b) eval
def part_b(tofu: str, out: Path, max_new: int, naive: bool, max_samples: int | None = None) -> dict[str, Any]:
    from obliviate.metrics import runner as R
    from obliviate.pipelines import llm, llm_eval

    ph = Phases()
    ph.wrap(llm, "load_model", "load (model + tokenizer)")
    ph.wrap(llm_eval, "prepare_evaluations", "data (read + tokenise)")
    ph.wrap(R.ForwardRunner, "score", "teacher-forced passes")
    ph.wrap(R.ForwardRunner, "generate", "generation (ROUGE)")
    runners: list[Any] = []
    original_init = R.ForwardRunner.__init__

    def init(self: Any, model: Any, **kw: Any) -> None:
        original_init(self, model, **kw)
        runners.append(self)

    R.ForwardRunner.__init__ = init  # type: ignore[method-assign]
    calls = {"tf": 0, "gen": 0}
    state = {"phase": "tf", "hooked": False}
    original_load = llm.load_model

    def load_and_hook(cfg: Any) -> Any:
        model, tok = original_load(cfg)
        if not state["hooked"]:
            model.register_forward_pre_hook(lambda *a: calls.__setitem__(state["phase"], calls[state["phase"]] + 1))
            state["hooked"] = True
        return model, tok

    llm.load_model = load_and_hook
    original_generate = R.ForwardRunner.generate

    def generate(self: Any, *a: Any, **kw: Any) -> Any:
        state["phase"] = "gen"
        try:
            return original_generate(self, *a, **kw)
        finally:
            state["phase"] = "tf"

    R.ForwardRunner.generate = generate  # type: ignore[method-assign]
    run_dir = out / "eval_forget01"
    args = ["eval", "model=SmolLM2-135M-Instruct", f"paths.tofu={tofu}", "forget_split=forget01", "holdout_split=holdout01",
            f"eval.tofu.max_new_tokens={max_new}", f"paths.output_dir={run_dir}", f"paths.cache_dir={out / 'tok_cache_eval'}",
            "overwrite=true", *([f"eval.tofu.max_samples={max_samples}"] if max_samples else [])]
    load_before = load()
    total = _run_cli(args)
    counter = runners[-1].counter
    rows = [(k, ph.wall[k], ph.cpu[k]) for k in ph.wall]
    rows.append(("other (compose, metrics, files)", total[0] - sum(ph.wall.values()), total[1] - sum(ph.cpu.values())))
    m = json.loads((run_dir / "metrics.json").read_text())
    eval_s = {k: ph.wall[k] for k in ("teacher-forced passes", "generation (ROUGE)")}
    res = {"command": "obliviate " + " ".join(args), "load_before": load_before, "load_after": load(),
           "phases": {k: {"wall_s": w, "cpu_s": c} for k, w, c in rows}, "total_wall_s": total[0], "total_cpu_s": total[1],
           "counter": vars(counter), "forward_calls": dict(calls), "n": m["eval"]["tofu"]["n"],
           "summary": m["eval"]["tofu"]["summary"], "eval_wall_s": sum(eval_s.values()),
           "eval_cpu_s": ph.cpu["teacher-forced passes"] + ph.cpu["generation (ROUGE)"]}
    print(f"\n== (b) obliviate eval, forget01, all splits, ROUGE at {max_new} new tokens "
          f"(load {load_before} -> {res['load_after']})")
    print(_table(rows, total))
    print(f"samples: {m['eval']['tofu']['n']}; teacher-forced: {calls['tf']} forward calls, {counter.forward_rows} rows, "
          f"{counter.forward_sequences} sequences, {counter.forward_tokens} tokens (LM head on {counter.head_tokens}); "
          "generation: "
          f"{calls['gen']} forward calls in {counter.generate_calls} generate calls for {counter.generated_prompts} prompts, "
          f"{counter.generated_tokens} generated tokens + {counter.draft_tokens} taken from teacher forcing")
    if naive:
        del runners[:]
        R.ForwardRunner.__init__, R.ForwardRunner.generate = original_init, original_generate  # type: ignore[method-assign]
        llm.load_model = original_load
        res["naive"] = naive_baseline(tofu, max_new, res, run_dir / "TOFU_EVAL.json", max_samples)
    return res


def part_dtype(tofu: str, out: Path, max_new: int, rows: int) -> dict[str, Any]:
    """(c) What ``eval.tofu.dtype=bfloat16`` changes: ``obliviate eval`` on the first ``rows`` rows of every split in
    float32 (the SmolLM2 config) and scoring a bfloat16 copy, alternated in one process; times and the largest change
    of a headline value."""
    res: dict[str, Any] = {"rows_per_split": rows, "runs": []}
    for dtype in ("float32", "bfloat16", "float32", "bfloat16"):
        run_dir = out / f"eval_dtype_{dtype}"
        args = ["eval", "model=SmolLM2-135M-Instruct", f"paths.tofu={tofu}", "forget_split=forget01", "holdout_split=holdout01",
                f"eval.tofu.max_new_tokens={max_new}", f"eval.tofu.max_samples={rows}", f"paths.output_dir={run_dir}",
                f"paths.cache_dir={out / 'tok_cache_eval'}", "overwrite=true", f"eval.tofu.dtype={dtype}"]
        load_before = load()
        w = _run_cli(args)
        m = json.loads((run_dir / "metrics.json").read_text())
        res["runs"].append({"dtype": dtype, "wall_s": w[0], "cpu_s": w[1], "eval_time_s": m["eval"]["tofu"]["eval_time_s"],
                            "summary": m["eval"]["tofu"]["summary"], "load": f"{load_before} -> {load()}"})
    best = {d: min(r["cpu_s"] for r in res["runs"] if r["dtype"] == d) for d in ("float32", "bfloat16")}
    ev = {d: min(r["eval_time_s"] for r in res["runs"] if r["dtype"] == d) for d in best}
    f32 = next(r["summary"] for r in res["runs"] if r["dtype"] == "float32")
    b16 = next(r["summary"] for r in res["runs"] if r["dtype"] == "bfloat16")
    diff = {k: abs(f32[k] - b16[k]) for k in f32 if isinstance(f32[k], float) and isinstance(b16.get(k), float)}
    res.update({"best_cpu_s": best, "best_eval_wall_s": ev, "speedup_cpu": best["float32"] / best["bfloat16"],
                "speedup_eval_wall": ev["float32"] / ev["bfloat16"], "abs_diff": diff, "float32": f32, "bfloat16": b16})
    print(f"\n== (c) float32 vs eval.tofu.dtype=bfloat16, obliviate eval on {rows} rows per split, ROUGE at {max_new} tokens")
    print(f"command CPU s (best of 2): float32 {best['float32']:.1f}, bfloat16 {best['bfloat16']:.1f} "
          f"({res['speedup_cpu']:.2f}x); evaluation wall s: {ev['float32']:.1f} vs {ev['bfloat16']:.1f} "
          f"({res['speedup_eval_wall']:.2f}x); headline changes: "
          + ", ".join(f"{k} {f32[k]:.4g}->{b16[k]:.4g}" for k in sorted(diff)))
    return res


def naive_baseline(tofu: str, max_new: int, ours: dict[str, Any], eval_file: Path,
                   max_samples: int | None = None) -> dict[str, Any]:
    """bench/eval_cost.py's naive one-pass-per-metric evaluation on the same tokenised splits, after (b) in the same
    process: its time against (b)'s teacher-forced + generation time, and the largest difference of an aggregate."""
    import eval_cost

    model, tok, splits = eval_cost.real_tofu(tofu, "forget01", max_new, max_samples)
    meter = eval_cost.Meter(model)
    load_before = load()
    w, c = time.perf_counter(), time.process_time()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = eval_cost.Naive(model, tok, meter, 32, max_new).evaluate(splits)
    wall, cpu = time.perf_counter() - w, time.process_time() - c
    mine = {k: v.get("agg_value") for k, v in json.loads(eval_file.read_text()).items()}
    diff = max(abs(ref[k] - mine[k]) for k in ref if isinstance(mine.get(k), float) and isinstance(ref[k], float)
               and ref[k] == ref[k])
    res = {"load_before": load_before, "load_after": load(), "wall_s": wall, "cpu_s": cpu, "forward_calls": dict(meter.calls),
           "sequences": meter.sequences, "tokens": meter.tokens, "batch_size": 32, "max_abs_diff_agg": diff,
           "ratio_wall": wall / ours["eval_wall_s"], "ratio_cpu": cpu / ours["eval_cpu_s"]}
    print(f"\n== naive per-metric evaluation of the same splits (bench/eval_cost.py, batch 32; load {load_before} -> "
          f"{res['load_after']})")
    print(f"{'':34}{'naive':>10}{'obliviate':>11}{'ratio':>8}")
    calls = ours["forward_calls"]
    for name, a, b in (("teacher-forced forward calls", meter.calls["tf"], calls["tf"]),
                       ("generation forward calls", meter.calls["gen"], calls["gen"]),
                       ("sequences through forward", meter.sequences, ours["counter"]["forward_sequences"]),
                       ("tokens through forward (no pad)", meter.tokens, ours["counter"]["forward_tokens"]),
                       ("evaluation wall s", wall, ours["eval_wall_s"]), ("evaluation CPU s", cpu, ours["eval_cpu_s"])):
        print(f"{name:34}{a:>10.4g}{b:>11.4g}{a / b if b else float('inf'):>7.2f}x")
    print(f"max |naive - obliviate| over aggregate values: {diff:.2e}")
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--part", choices=("a", "b", "c", "all"), default="all", help="a: seed-001, b: eval, c: float32 vs bfloat16 "
                    "eval on --dtype-rows rows (not in all)")
    ap.add_argument("--dtype-rows", type=int, default=40)
    ap.add_argument("--max-samples", type=int, default=None, help="(b) first N rows per split (smoke runs; default: all)")
    ap.add_argument("--tofu", default="../shared/data/tofu", help="TOFU folder of <split>.json files")
    ap.add_argument("--out", default="bench_out/llm_realsize")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--naive", action="store_true", help="(b) also run the naive per-metric baseline (long: ~2-3x the eval)")
    ap.add_argument("--probe-all", action="store_true", help="(a) probe every row (probe_samples=null) instead of estimating it")
    ap.add_argument("--probe-samples", type=int, default=None, help="(a) probe_samples=N instead of the default (256)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"machine": machine(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    if args.part in ("a", "all"):
        results["seed001"] = part_a(args.tofu, out, args.probe_all, args.probe_samples)
    if args.part in ("b", "all"):
        results["eval"] = part_b(args.tofu, out, args.max_new_tokens, args.naive, args.max_samples)
    if args.part == "c":
        results["dtype"] = part_dtype(args.tofu, out, args.max_new_tokens, args.dtype_rows)
    (out / f"results_{args.part}.json").write_text(json.dumps(results, indent=2, default=str))
    print(f"\nresults: {out / f'results_{args.part}.json'}")


if __name__ == "__main__":
    main()
