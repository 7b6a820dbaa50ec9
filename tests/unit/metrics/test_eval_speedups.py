"""The evaluation speed-ups change no metric value.

The fast path (one packed pass per question, the LM head only at scored positions, argmax and
Min-K%++ statistics only where a metric reads them, generation resumed after the teacher-forced
tokens, in batches of 32 prompts) is compared with bench/eval_cost.py's naive evaluation (one
plain pass per metric, full-vocabulary log-softmax, generation from scratch) on a tiny model.
"""

from __future__ import annotations

import importlib.util
import math
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from obliviate.metrics.runner import ForwardRunner
from obliviate.metrics.tofu_eval import evaluate_tofu

BENCH = Path(__file__).resolve().parents[3] / "bench" / "eval_cost.py"


@pytest.fixture(scope="module")
def eval_cost():
    spec = importlib.util.spec_from_file_location("eval_cost_bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules["eval_cost_bench"] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("eval_cost_bench", None)


@pytest.mark.parametrize("scenario", ["target", "unlearned", "random"])
def test_fast_path_equals_the_naive_per_metric_path(eval_cost, scenario):
    model, tok = eval_cost.build_model("tiny", 2)
    sizes = {"forget": 6, "retain": 6, "ra": 4, "wf": 4, "holdout": 6}
    splits = eval_cost.make_data(model, tok, sizes, scenario, max_new=12)
    naive = eval_cost.Naive(model, tok, eval_cost.Meter(model), bs=4, max_new=12).evaluate(splits)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fast = evaluate_tofu(model, tok, splits, batch_size=3, generation_batch_size=32, max_new_tokens=12)
    for key, value in naive.items():
        got = fast[key]["agg_value"]
        if value is None or (isinstance(value, float) and math.isnan(value)):
            assert got is None or math.isnan(got), key
        else:
            assert got == pytest.approx(value, abs=1e-5), key


def test_selected_statistics_are_the_full_ones(eval_cost):
    """Records scored with `needs` hold the same bits as records scored with everything."""
    model, tok = eval_cost.build_model("tiny", 2)
    splits = eval_cost.make_data(model, tok, {"forget": 5}, "unlearned", max_new=8)
    groups = [[s, s["paraphrased"], *s["perturbed"]] for s in splits["forget"]]
    full = ForwardRunner(model, batch_size=2).score(groups)
    needs = {(g, 0): {"pred", "vocab"} for g in range(len(groups))} | {(1, 3): {"pred"}}
    part = ForwardRunner(model, batch_size=2).score(groups, needs=needs)
    for g, (fg, pg) in enumerate(zip(full, part)):
        for v, (f, p) in enumerate(zip(fg, pg)):
            np.testing.assert_array_equal(f.logp, p.logp)
            if v == 0 or (g, v) == (1, 3):
                np.testing.assert_array_equal(f.pred, p.pred)
            else:
                assert p.pred is None and p.mu is None
            if v == 0:
                np.testing.assert_array_equal(f.mu, p.mu)
                np.testing.assert_array_equal(f.sigma, p.sigma)
    with pytest.raises(ValueError, match="argmax"):
        part[0][1].correct  # noqa: B018


def test_lm_head_runs_only_at_scored_positions(eval_cost):
    model, tok = eval_cost.build_model("tiny", 2)
    splits = eval_cost.make_data(model, tok, {"retain": 4}, "random", max_new=8)
    runner = ForwardRunner(model, batch_size=4)
    runner.score([[s, s["paraphrased"], *s["perturbed"]] for s in splits["retain"]])
    c = runner.counter
    scored = sum(len(s["labels"]) - s["labels"].index(next(x for x in s["labels"] if x != -100)) for s in
                 (x for s in splits["retain"] for x in (s, s["paraphrased"], *s["perturbed"])))
    assert c.head_tokens == scored < c.forward_tokens  # the prompt positions never reach the head
