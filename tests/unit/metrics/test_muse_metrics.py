"""MUSE metrics against ports of the references' arithmetic: open-unlearning (privleak, Min-K%
attack, rouge via eval_text_similarity, extraction strength) and muse_bench (knowmem stop words,
PrivLeak from its own AUC convention), on the shared-pass evaluation of a tiny random Llama."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from sklearn.metrics import auc as sk_auc
from sklearn.metrics import roc_auc_score, roc_curve

from obliviate.data.text.muse import load_muse_eval
from obliviate.data.text.synthetic_bench import write_synthetic_muse
from obliviate.metrics import METRICS
from obliviate.metrics.muse import KNOWMEM_STOPWORDS, cut_at_stopwords, evaluate_muse, muse_privleak, privleak_result
from obliviate.models.llm import load_causal_lm

IGNORE = -100


# ---------------------------------------------------------------- reference ports
def ref_privleak(score, ref):  # open-unlearning src/evals/metrics/privacy.py::privleak
    score, ref = 1 - score, 1 - ref
    return (score - ref) / (ref + 1e-10) * 100


def ref_min_k(lp, k):  # open-unlearning MinKProbAttack.compute_score (higher = less likely a member)
    lp = np.asarray(lp)
    num_k = max(1, int(len(lp) * k))
    return -np.mean(np.sort(lp)[:num_k])


def ref_mia_auc(forget_scores, holdout_scores):  # open-unlearning mia_auc: labels forget 0, holdout 1
    labels = np.array([0] * len(forget_scores) + [1] * len(holdout_scores))
    return roc_auc_score(labels, np.array(list(forget_scores) + list(holdout_scores)))


def muse_bench_auc(forget_ppl, holdout_ppl):  # muse_bench metrics/privleak.py sweep(): forget = non-member (0), holdout = member (1)
    ppl = np.array(list(forget_ppl) + list(holdout_ppl))
    y = np.array([0] * len(forget_ppl) + [1] * len(holdout_ppl))
    fpr, tpr, _ = roc_curve(y, -ppl)
    return sk_auc(fpr, tpr)


def ref_rouge(gen, gt):  # open-unlearning eval_text_similarity's scorer
    from rouge_score import rouge_scorer  # imported late: absl's logging binds the stream captured at import time

    s = rouge_scorer.RougeScorer(["rouge1", "rougeL"], use_stemmer=True).score(gt, gen)
    return s["rougeL"].fmeasure


def ref_es(preds, labels):  # open-unlearning extraction_strength loop (its quirk: 1/n when nothing matches)
    n = len(labels)
    for k in range(n):
        if np.array_equal(preds[k:], labels[k:]):
            break
    return 1 - k / n


# ---------------------------------------------------------------- formulas
@pytest.mark.parametrize("a,r", [(0.99, 0.48), (0.5, 0.5), (0.2, 0.6), (0.7, 0.0)])
def test_privleak_equals_open_unlearning_and_muse_bench(a, r):
    assert muse_privleak(a, r) == pytest.approx(ref_privleak(a, r), rel=1e-8)
    # muse_bench: AUC_muse = 1 - a, PrivLeak = (AUC - AUC_retrain) / AUC_retrain * 100
    assert muse_privleak(a, r) == pytest.approx(((1 - a) - (1 - r)) / (1 - r) * 100)
    assert np.isnan(muse_privleak(0.3, 1.0))  # the reference divides by 1e-10 instead
    assert METRICS.meta("muse_privleak")["higher_is_better"] is None


def test_min_k_auc_and_privleak_match_both_references_on_random_scores():
    from obliviate.metrics.mia_llm import mia_auc, min_k_score

    rng = np.random.default_rng(0)
    forget = [rng.normal(-1.0, 1.0, size=int(rng.integers(5, 40))) for _ in range(30)]
    holdout = [rng.normal(-1.6, 1.0, size=int(rng.integers(5, 40))) for _ in range(25)]
    ours = mia_auc([min_k_score(lp, 0.4) for lp in forget], [min_k_score(lp, 0.4) for lp in holdout])
    ref = ref_mia_auc([ref_min_k(lp, 0.4) for lp in forget], [ref_min_k(lp, 0.4) for lp in holdout])
    bench = muse_bench_auc([ref_min_k(lp, 0.4) for lp in forget], [ref_min_k(lp, 0.4) for lp in holdout])
    assert ours == pytest.approx(ref) and ours > 0.6
    assert bench == pytest.approx(1 - ours)  # muse_bench's AUC is the complement
    r = 0.47
    assert muse_privleak(ours, r) == pytest.approx((bench - (1 - r)) / (1 - r) * 100)


def test_stopwords_cut_like_muse_bench():
    def muse_bench_cut(s, words):
        for w in words:
            s = s.split(w)[0]
        return s

    for text in ("Paris\n\nQuestion: next", " Oslo\nQuestion: x", "Question: Ann", "plain answer ", "a\n\nb\nQuestionc"):
        assert cut_at_stopwords(text, KNOWMEM_STOPWORDS) == muse_bench_cut(text, KNOWMEM_STOPWORDS).strip()


# ---------------------------------------------------------------- evaluate_muse vs a naive per-sample reference evaluation
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    model, tok = load_causal_lm({"builder": "tiny-llama", "config_args": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                                                                         "num_attention_heads": 4, "num_key_value_heads": 2, "init_seed": 3}})
    data = write_synthetic_muse(tmp_path_factory.mktemp("muse") / "d", n_forget=4, n_retain=4, n_holdout=5)
    cfg = {"data_path": str(data), "verbmem": {"name": "verbmem", "split": "forget", "insert_space": True},
           "knowmem_forget": {"name": "knowmem", "split": "forget_qa", "icl_split": "forget_qa_icl"},
           "knowmem_retain": {"name": "knowmem", "split": "retain_qa", "icl_split": "retain_qa_icl"},
           "privleak": {"name": "privleak"}}
    template = {"apply_chat_template": False, "user_start_tag": "Question: ", "user_end_tag": "\n", "asst_start_tag": "Answer: ",
                "asst_end_tag": "\n\n"}
    splits, _ = load_muse_eval(cfg, tok, template)
    return model.eval(), tok, splits


@torch.no_grad()
def _naive_generate(model, tok, prompt_ids, max_new_tokens):
    out = model.generate(torch.tensor([prompt_ids]), attention_mask=torch.ones(1, len(prompt_ids), dtype=torch.long),
                         max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, pad_token_id=tok.eos_token_id)
    return tok.batch_decode(out[:, len(prompt_ids):], skip_special_tokens=True, clean_up_tokenization_spaces=True)[0]


@torch.no_grad()
def _token_logprobs(model, ids, labels):
    logits = model(torch.tensor([ids])).logits[0, :-1].float()  # [s-1, v]
    lsm = torch.log_softmax(logits, -1)
    tgt = torch.tensor(labels[1:])
    keep = tgt != IGNORE
    return lsm[keep].gather(-1, tgt[keep].unsqueeze(-1)).squeeze(-1).numpy(), lsm[keep].argmax(-1).numpy(), tgt[keep].numpy()


def test_evaluate_muse_equals_a_naive_reference_evaluation(tiny, tmp_path):
    model, tok, splits = tiny
    retain_logs = tmp_path / "MUSE_EVAL.json"
    retain_logs.write_text(json.dumps({"mia_min_k": {"agg_value": 0.42}}))
    res = evaluate_muse(model, tok, splits, batch_size=3, verbmem_max_new_tokens=24, knowmem_max_new_tokens=12,
                        retain_logs_path=retain_logs)
    # VerbMem / KnowMem: one generate call per sample, decoded, cut, ROUGE-L F1, mean
    for key, split, budget in (("forget_verbmem_ROUGE", "verbmem", 24), ("forget_knowmem_ROUGE", "knowmem_forget", 12),
                               ("retain_knowmem_ROUGE", "knowmem_retain", 12)):
        gens = [_naive_generate(model, tok, s["prompt_ids"], budget) for s in splits[split]]
        gens = [g.strip() if split == "verbmem" else cut_at_stopwords(g, KNOWMEM_STOPWORDS) for g in gens]
        scores = [ref_rouge(g, s["ground_truth"]) for g, s in zip(gens, splits[split])]
        assert [v["generation"] for v in res[key]["value_by_index"].values()] == gens
        assert res[key]["agg_value"] == pytest.approx(np.mean(scores))
    # extraction strength on verbmem: the reference loop (equal whenever something is reproduced)
    for s, v in zip(splits["verbmem"], res["extraction_strength"]["value_by_index"].values()):
        _, pred, lab = _token_logprobs(model, s["input_ids"], s["labels"])
        expected = ref_es(pred, lab)
        assert v["score"] == pytest.approx(0.0 if pred[-1] != lab[-1] else expected)
    # PrivLeak: Min-K% scores per document, the reference's AUC and privleak against the retain logs' AUC
    f = [ref_min_k(_token_logprobs(model, s["input_ids"], s["labels"])[0], 0.4) for s in splits["privleak_forget"]]
    h = [ref_min_k(_token_logprobs(model, s["input_ids"], s["labels"])[0], 0.4) for s in splits["privleak_holdout"]]
    auc = ref_mia_auc(f, h)
    assert res["mia_min_k"]["agg_value"] == pytest.approx(auc)
    assert res["privleak"]["agg_value"] == pytest.approx(ref_privleak(auc, 0.42), rel=1e-6)
    assert res["privleak"]["ref_source"] == "retain_logs" and res["privleak"]["attack"] == "mia_min_k"
    assert set(res) >= {"mia_min_k_plus_plus", "mia_loss", "mia_zlib", "exact_memorization"}


def test_privleak_without_retain_logs_uses_the_reference_default_and_warns(tiny):
    model, tok, splits = tiny
    with pytest.warns(UserWarning, match="using reference AUC 0.5"):
        res = evaluate_muse(model, tok, {k: splits[k] for k in ("privleak_forget", "privleak_holdout")}, generate=False,
                            privleak_attack="mia_min_k_plus_plus")
    assert res["privleak"]["ref_auc"] == 0.5 and res["privleak"]["attack"] == "mia_min_k_plus_plus"
    assert res["privleak"]["agg_value"] == pytest.approx(muse_privleak(res["mia_min_k_plus_plus"]["agg_value"], 0.5))
    assert "forget_verbmem_ROUGE" not in res
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert privleak_result({"mia_min_k": {"agg_value": 0.9}}, None, ref_auc=None)["agg_value"] is None


def test_results_do_not_depend_on_batch_size(tiny):
    model, tok, splits = tiny
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = evaluate_muse(model, tok, splits, batch_size=1, verbmem_max_new_tokens=8, knowmem_max_new_tokens=8)
        b = evaluate_muse(model, tok, splits, batch_size=5, verbmem_max_new_tokens=8, knowmem_max_new_tokens=8)
    for key in a:
        assert a[key]["agg_value"] == pytest.approx(b[key]["agg_value"], abs=1e-5), key
