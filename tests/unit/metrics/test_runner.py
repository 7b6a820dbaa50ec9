"""Shared-pass runner: one pass per sequence, batch-size invariance, generation, schema."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import torch

from obliviate.errors import DataError
from obliviate.metrics.runner import ForwardRunner, greedy_draft, save_tofu_results, tofu_summary
from obliviate.metrics.tofu import MODEL_UTILITY_KEYS, model_utility
from obliviate.metrics.tofu_eval import evaluate_tofu
from obliviate.models.adapters import CausalLMAdapter

from .conftest import EOS, PAD, encode_qa, make_split


def _groups(splits):
    out = []
    for s in splits["forget"] + splits["retain"]:
        out.append([s, s["paraphrased"], *s["perturbed"]])
    return out + [[s] for s in splits["holdout"]]


def _close(a, b, tol=1e-5):
    for ga, gb in zip(a, b):
        for ra, rb in zip(ga, gb):
            np.testing.assert_allclose(ra.logp, rb.logp, atol=tol)
            np.testing.assert_allclose(ra.mu, rb.mu, atol=tol)
            np.testing.assert_allclose(ra.sigma, rb.sigma, atol=tol)
            assert (ra.labels == rb.labels).all()


def test_logprobs_match_adapter(model, splits):
    s = splits["forget"][0]
    rec = ForwardRunner(model, batch_size=1).score([[s]])[0][0]
    batch = {k: torch.tensor([s[k]]) for k in ("input_ids", "labels")}
    batch["attention_mask"] = torch.ones_like(batch["input_ids"])
    with torch.no_grad():
        logp, mask, logits = CausalLMAdapter().token_logprobs(model, batch)
    np.testing.assert_allclose(rec.logp, logp[mask].numpy(), atol=1e-5)
    assert (rec.pred == logits[mask].argmax(-1).numpy()).all()


def test_one_forward_pass_per_sequence(model, splits):
    groups = _groups(splits)
    calls = []
    handle = model.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        runner = ForwardRunner(model, batch_size=4)
        records = runner.score(groups)
    finally:
        handle.remove()
    n_seq = sum(len(g) for g in groups)
    assert runner.counter.forward_sequences == n_seq == sum(len(r) for r in records)
    assert runner.counter.forward_rows == len(groups)  # each question's variants share one row
    assert len(calls) == runner.counter.forward_calls == math.ceil(len(groups) / 4)


@pytest.mark.parametrize("pack", [True, False])
def test_batch_size_invariance(model, splits, pack):
    groups = _groups(splits)
    one = ForwardRunner(model, batch_size=1, pack_prefix=pack).score(groups)
    four = ForwardRunner(model, batch_size=4, pack_prefix=pack).score(groups)
    _close(one, four)


def test_packing_is_exact(model, splits):
    groups = _groups(splits)
    packed = ForwardRunner(model, batch_size=3, pack_prefix=True)
    plain = ForwardRunner(model, batch_size=3, pack_prefix=False)
    _close(packed.score(groups), plain.score(groups))
    assert packed.counter.forward_rows < plain.counter.forward_rows


def test_label_length_mismatch_is_an_error(model):
    with pytest.raises(DataError, match="labels"):
        ForwardRunner(model).score([[{"input_ids": [1, 5, 6], "labels": [-100, 5]}]])


def test_left_padded_generation_equals_unpadded(model, tok):
    prompts = [[1] + tok.encode("Q: " + "ab" * n + "\nA:") for n in (1, 4, 2, 7, 3)]
    runner = ForwardRunner(model, generation_batch_size=5)
    batched = runner.generate(prompts, max_new_tokens=10, eos_token_ids=[EOS], pad_token_id=PAD)
    for prompt, got in zip(prompts, batched):
        ref = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                             max_new_tokens=10, do_sample=False, pad_token_id=PAD, eos_token_id=EOS)
        new = ref[0, len(prompt):].tolist()
        assert got == (new[: new.index(EOS)] if EOS in new else new)


@pytest.mark.parametrize("n_match", [0, 4, 12])
def test_teacher_forcing_draft_equals_plain_generation(model, tok, n_match):
    prompt = [1] + tok.encode("Q: who wrote it\nA:")
    runner = ForwardRunner(model)
    greedy = runner.generate([prompt], max_new_tokens=12, eos_token_ids=[EOS])[0]
    wrong = (greedy[n_match] + 1 - 3) % 95 + 3 if n_match < len(greedy) else 5
    answer = greedy[:n_match] + [wrong] + tok.encode(" tail") + [EOS]
    sample = {"input_ids": prompt + answer, "labels": [-100] * len(prompt) + answer}
    record = runner.score([[sample]])[0][0]
    draft = greedy_draft(sample, prompt, record)
    assert len(draft) == n_match + 1 and draft[:12] == greedy[: n_match + 1]
    before = runner.counter.generate_calls
    out = runner.generate([prompt], max_new_tokens=12, eos_token_ids=[EOS], drafts=[draft])
    assert out == [greedy]
    assert runner.counter.generate_calls - before == (0 if n_match + 1 >= 12 else 1)
    assert greedy_draft(sample, prompt[:-1], record) is None  # prompt not a prefix of the labels' start


SPLIT_OF = {"forget": "forget", "retain": "retain", "ra": "real_authors", "wf": "world_facts"}
EXPECTED = {
    "forget_Q_A_Prob", "forget_Q_A_PARA_Prob", "forget_Q_A_PERT_Prob", "forget_Q_A_ROUGE", "forget_truth_ratio",
    "forget_quality", "model_utility", "privleak", "extraction_strength", "exact_memorization", "mia_loss",
    "mia_zlib", "mia_min_k", "mia_min_k_plus_plus", "retain_Q_A_PARA_Prob", "retain_Q_A_PERT_Prob",
    "ra_Q_A_Prob", "wf_Q_A_Prob", "ra_Q_A_PERT_Prob", "wf_Q_A_PERT_Prob", *MODEL_UTILITY_KEYS,
}


@pytest.fixture(scope="module")
def results(model, tok, splits):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return evaluate_tofu(model, tok, splits, batch_size=4, max_new_tokens=8)


def test_schema(results, splits, tmp_path):
    assert set(results) == EXPECTED
    for key, entry in results.items():
        assert "agg_value" in entry, key
        if key.startswith("mia_"):
            assert set(entry["forget"]["value_by_index"]) == {str(s["index"]) for s in splits["forget"]}
            assert set(entry["holdout"]["value_by_index"]) == {str(s["index"]) for s in splits["holdout"]}
        elif "value_by_index" in entry:
            split = SPLIT_OF.get(key.split("_")[0], "forget")
            assert set(entry["value_by_index"]) == {str(s["index"]) for s in splits[split]}, key
            assert all("score" in v for v in entry["value_by_index"].values()), key
    assert "generation" in results["forget_Q_A_ROUGE"]["value_by_index"]["0"]
    mu = model_utility({k: results[k]["agg_value"] for k in MODEL_UTILITY_KEYS})
    assert results["model_utility"]["agg_value"] == pytest.approx(mu)
    eval_path, summary_path = save_tofu_results(results, tmp_path)
    summary = json.loads(summary_path.read_text())
    assert summary == pytest.approx(tofu_summary(results), nan_ok=True)
    assert set(summary) == EXPECTED and all(v is None or isinstance(v, float) for v in summary.values())
    assert json.loads(eval_path.read_text())["forget_Q_A_Prob"]["value_by_index"]["0"]["score"] > 0


def test_missing_retain_logs_warns_and_gives_null(model, tok, splits, tmp_path):
    for path in (None, tmp_path / "nope" / "TOFU_EVAL.json"):
        with pytest.warns(UserWarning) as caught:
            res = evaluate_tofu(model, tok, splits, generate=False, retain_logs_path=path)
        assert any("forget_quality" in str(w.message) for w in caught)
        assert res["forget_quality"]["agg_value"] is None
        assert res["forget_Q_A_Prob"]["agg_value"] > 0


def test_retain_logs_give_forget_quality_and_privleak(results, model, tok, splits, tmp_path):
    save_tofu_results(results, tmp_path)  # the "retain model" is the same model here
    with pytest.warns(UserWarning, match="model_utility skipped"):
        res = evaluate_tofu(model, tok, splits, batch_size=4, generate=False, retain_logs_path=tmp_path)
    assert res["forget_quality"]["agg_value"] == pytest.approx(1.0)
    assert res["privleak"]["agg_value"] == pytest.approx(0.0, abs=1e-9)
    assert res["privleak"]["ref_source"] == "retain_logs"
    assert "forget_Q_A_ROUGE" not in res and res["model_utility"]["agg_value"] is None


def test_evaluate_tofu_batch_size_invariant(results, model, tok, splits):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        one = evaluate_tofu(model, tok, splits, batch_size=1, max_new_tokens=8, pack_prefix=False, reuse_teacher_forcing=False)
    for key, entry in results.items():
        a, b = entry["agg_value"], one[key]["agg_value"]
        assert (a is None and b is None) or a == pytest.approx(b, abs=1e-5), key


def test_unknown_split_is_an_error(model, tok):
    with pytest.raises(DataError, match="unknown TOFU split"):
        evaluate_tofu(model, tok, {"forgot": []})


def test_empty_answer_gives_nan_not_crash(model, tok):
    s = encode_qa(tok, "q", "a")
    s = {"input_ids": s["input_ids"], "labels": [-100] * len(s["labels"]), "index": 0}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = evaluate_tofu(model, tok, {"forget": [s], "holdout": make_split(tok, 2, 9, n_pert=0, para=False)}, generate=False)
    assert res["forget_Q_A_Prob"]["value_by_index"]["0"]["avg_loss"] != res["forget_Q_A_Prob"]["value_by_index"]["0"]["avg_loss"]
    assert res["extraction_strength"]["agg_value"] == 0.0


def test_evaluate_tofu_one_pass_per_question(model, tok, splits):
    calls = []
    handle = model.register_forward_pre_hook(lambda *a: calls.append(1))
    runner = ForwardRunner(model, batch_size=4)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            evaluate_tofu(model, tok, splits, generate=False, runner=runner)
    finally:
        handle.remove()
    n_questions = sum(len(v) for v in splits.values())
    n_sequences = sum(1 + ("paraphrased" in s) + len(s.get("perturbed", [])) for k, v in splits.items() for s in v
                      if k != "holdout") + len(splits["holdout"])
    assert len(calls) == runner.counter.forward_calls == math.ceil(n_questions / 4)
    assert runner.counter.forward_sequences == n_sequences
