"""Smoke test of ``bench/llm_throughput.py``: every step kind runs one optimizer step with a
finite loss on a tiny model, and cached NPO makes no reference forward while stepping (the
uncached variant makes one per step). No timing assertions."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[3] / "bench" / "llm_throughput.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("llm_throughput_bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _setup(bench):
    model, vocab = bench.build_model("tiny", hidden=32, layers=2, vocab=64)
    forget = bench.make_items(4, 16, vocab, seed=1)
    retain = bench.make_items(4, 16, vocab, seed=2)
    batches = bench.make_batches(forget, retain, 2)
    return model, forget, batches


def test_each_step_kind_runs_with_a_finite_loss(bench):
    model, forget, batches = _setup(bench)
    steppers = bench.make_steppers(model, forget)
    assert set(steppers) == set(bench.METHODS)
    for name, stepper in steppers.items():
        before = [p.detach().clone() for p in stepper.model.parameters()]
        loss = stepper.step(batches[0])
        assert math.isfinite(loss), name
        assert any(not b.equal(p) for b, p in zip(before, stepper.model.parameters(), strict=True)), f"{name}: no update"
    assert bench.answer_tokens(batches[0]) > 0


def test_cached_npo_runs_no_reference_forward_while_stepping(bench, monkeypatch):
    calls = {"n": 0}
    original = bench.frozen_copy

    def counting_copy(model):
        ref = original(model)
        ref.register_forward_pre_hook(lambda *_: calls.__setitem__("n", calls["n"] + 1))
        return ref

    monkeypatch.setattr(bench, "frozen_copy", counting_copy)
    model, forget, batches = _setup(bench)

    cached = bench.make_steppers(model, forget, methods=("npo_cached",))["npo_cached"]
    after_setup = calls["n"]
    assert after_setup > 0  # the cache was filled in setup, by the reference
    assert cached.ctx.ref_model is None  # and the reference released
    times = bench.run({"npo_cached": cached}, batches, warmup=1, steps=1)
    assert len(times["npo_cached"]) == 1
    assert calls["n"] == after_setup  # no reference forward during the steps

    uncached = bench.make_steppers(model, forget, methods=("npo_uncached",))["npo_uncached"]
    start = calls["n"]
    bench.run({"npo_uncached": uncached}, batches, warmup=0, steps=2)
    assert calls["n"] - start == 2  # one reference forward per step
