"""MUSE metrics (Shi et al. 2024; the reference framework's ``muse`` evaluator), from shared passes.

- **VerbMem** (``forget_verbmem_ROUGE``): ROUGE-L F1 between the greedy continuation (128
  new tokens) of each verbmem ``prompt`` and its ground-truth ``gt``.
- **KnowMem** (``forget_knowmem_ROUGE``, ``retain_knowmem_ROUGE``): ROUGE-L F1 of greedy answers
  (32 new tokens, cut at ``"\\n\\n"``, ``"\\nQuestion"``, ``"Question:"``) to the knowmem
  questions after the in-context examples; the retain value is MUSE's **utility
  preservation**.
- **PrivLeak** (``privleak``): MUSE's relative AUC gap. With ``a`` the Min-K% (k = 0.4) AUC
  of separating privleak ``forget`` from ``holdout`` documents (1 = the forget documents look
  memorised) and ``r`` the retrained model's, ``PrivLeak = ((1 − a) − (1 − r)) / (1 − r) ×
  100`` (the reference's formula; MUSE reports AUCs as ``1 − a``). ≈ 0 is ideal, strongly
  negative = the forget set is still recognisable (the target model scores ≈ −100).
- ``extraction_strength`` / ``exact_memorization`` of the verbmem continuations and the four
  MIA AUCs (``mia_loss``, ``mia_zlib``, ``mia_min_k``, ``mia_min_k_plus_plus``) come free
  from the same passes.

One teacher-forced pass per sequence (:class:`~obliviate.metrics.runner.ForwardRunner`)
yields the MIA scores, the memorisation flags and the greedy tokens known from teacher
forcing; generation only continues after them (exact for greedy decoding).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from obliviate.metrics import METRICS
from obliviate.metrics.tofu import nanmean, rouge_scores, tofu_summary

#: Generated-text stop strings of MUSE's knowmem (muse_bench, the reference's generation args).
KNOWMEM_STOPWORDS = ("\n\n", "\nQuestion", "Question:")
EVAL_FILE, SUMMARY_FILE = "MUSE_EVAL.json", "MUSE_SUMMARY.json"
MIA_ATTACKS = ("mia_min_k", "mia_min_k_plus_plus", "mia_loss", "mia_zlib")


def cut_at_stopwords(text: str, stopwords: Sequence[str]) -> str:
    """Text before the first occurrence of each stop string in turn, stripped (muse_bench's
    ``get_prefix_before_words_occur`` followed by the reference's ``strip``)."""
    for word in stopwords:
        if word:
            text = text.split(word)[0]
    return text.strip()


@METRICS.register("muse_privleak", track="llm", higher_is_better=None, ideal=0.0, needs=("mia_min_k", "retain_logs"))
def muse_privleak(auc: float, auc_retrain: float) -> float:
    """MUSE PrivLeak ``((1 − a) − (1 − r)) / (1 − r) × 100`` (0 is ideal; NaN if ``r = 1``).

    ``a``/``r`` are AUCs with "1 = forget looks like members" (our and the reference
    framework's convention); MUSE reports ``1 − AUC``, hence the complements.
    """
    if not (np.isfinite(auc) and np.isfinite(auc_retrain)) or auc_retrain == 1:
        return float("nan")
    return float(((1 - auc) - (1 - auc_retrain)) / (1 - auc_retrain) * 100.0)


def rouge_entry(generations: Sequence[str], references: Sequence[str], indices: Sequence[str]) -> dict[str, Any]:
    """ROUGE entry in the reference schema: ``agg_value`` = mean ROUGE-L F1 (``score`` per sample)."""
    by = {}
    for i, gen, ref, s in zip(indices, generations, references, rouge_scores(generations, references)):
        by[i] = {"score": s["rougeL_f1"], **s, "generation": gen, "ground_truth": ref}
    return {"agg_value": nanmean([v["score"] for v in by.values()]), "value_by_index": by}


def _entry(scores: dict[str, float]) -> dict[str, Any]:
    return {"agg_value": nanmean(list(scores.values())), "value_by_index": {i: {"score": s} for i, s in scores.items()}}


def load_muse_retain_logs(path: str | os.PathLike | None) -> dict[str, Any] | None:
    """The retrained model's MUSE_EVAL.json (a file or a directory holding it); ``None`` + warning if unusable."""
    from obliviate.io import read_json

    if path is None:
        return None
    p = Path(path)
    p = p / EVAL_FILE if p.is_dir() else p
    try:
        logs = read_json(p)
    except (OSError, ValueError) as exc:
        warnings.warn(f"retain logs {p} unusable ({exc}); privleak uses privleak_ref_auc", UserWarning, stacklevel=2)
        return None
    return logs if isinstance(logs, dict) else None


def privleak_result(results: dict[str, Any], retain_logs: dict[str, Any] | None, attack: str = "mia_min_k",
                    ref_auc: float | None = 0.5) -> dict[str, Any]:
    """The ``privleak`` entry from ``results[attack]`` and the retrained model's same AUC.

    Without the retrain AUC (no or unusable logs) ``ref_auc`` is used (the reference's 0.5)
    with a warning; ``ref_auc=None`` then gives null.
    """
    ref = ((retain_logs or {}).get(attack) or {}).get("agg_value")
    source = "retain_logs"
    if ref is None:
        source, ref = "default", ref_auc
        warnings.warn(f"privleak: no retain-model {attack} AUC in the retain logs (retain_logs_path); using reference AUC {ref}",
                      UserWarning, stacklevel=2)
    value = None if ref is None or attack not in results else muse_privleak(results[attack]["agg_value"], float(ref))
    return {"agg_value": value, "ref_auc": ref, "ref_source": source, "attack": attack}


def evaluate_muse(
    model: nn.Module,
    tokenizer: Any,
    splits: dict[str, list[dict[str, Any]]],
    *,
    batch_size: int = 8,
    verbmem_max_new_tokens: int = 128,
    knowmem_max_new_tokens: int = 32,
    stopwords: Sequence[str] = KNOWMEM_STOPWORDS,
    generate: bool = True,
    mia_k: float = 0.4,
    privleak_attack: str = "mia_min_k",
    retain_logs_path: str | os.PathLike | None = None,
    privleak_ref_auc: float | None = 0.5,
    pack_prefix: bool = True,
    runner: Any = None,
) -> dict[str, dict[str, Any]]:
    """MUSE evaluation in the reference schema (``MUSE_EVAL.json``), one pass per sequence.

    Args:
        model: Causal LM (eval mode during the call, then restored).
        tokenizer: Its tokenizer.
        splits: From :func:`obliviate.data.text.muse.load_muse_eval`: ``verbmem``,
            ``knowmem_forget``, ``knowmem_retain``, ``privleak_forget``, ``privleak_holdout``
            (any may be absent). A sample has ``input_ids``, ``labels``, ``prompt_ids``,
            ``index`` and ``ground_truth`` (ROUGE) or ``text`` (ZLib).
        batch_size: Rows per teacher-forced / generate call.
        verbmem_max_new_tokens, knowmem_max_new_tokens: Generation budgets (128, 32).
        stopwords: Knowmem generations are cut before these strings.
        generate: ``False`` skips the ROUGE metrics.
        mia_k: k of Min-K% / Min-K%++.
        privleak_attack: The MIA whose AUC PrivLeak compares (``mia_min_k`` as the reference).
        retain_logs_path: The retrained model's MUSE_EVAL.json (or its directory).
        privleak_ref_auc: Retrain AUC when the logs have none (reference: 0.5).
        pack_prefix: Share prompt prefixes between sequences of a group (none here; kept for
            symmetry with the TOFU runner).
        runner: A :class:`~obliviate.metrics.runner.ForwardRunner` to reuse.
    """
    from obliviate.metrics.memorisation import exact_memorisation, extraction_strength
    from obliviate.metrics.mia_llm import loss_score, mia_auc, min_k_plus_plus_score, min_k_score, zlib_score
    from obliviate.metrics.runner import ForwardRunner, _eos_ids, greedy_draft

    if privleak_attack not in MIA_ATTACKS:
        from obliviate.errors import ConfigError

        raise ConfigError(f"eval.muse.privleak_attack '{privleak_attack}' is unknown; choose one of {', '.join(MIA_ATTACKS)}")
    pad = getattr(tokenizer, "pad_token_id", None)
    pad = pad if pad is not None else (_eos_ids(model, tokenizer) or [0])[0]
    runner = runner or ForwardRunner(model, batch_size=batch_size, pack_prefix=pack_prefix, pad_token_id=pad)
    names = [k for k in ("verbmem", "knowmem_forget", "knowmem_retain", "privleak_forget", "privleak_holdout") if splits.get(k)]
    groups = [[s] for k in names for s in splits[k]]
    was_training = model.training
    model.eval()
    try:
        flat = [r[0] for r in runner.score(groups)]
        records, at = {}, 0
        for k in names:
            records[k], at = flat[at : at + len(splits[k])], at + len(splits[k])
        texts: dict[str, list[str]] = {}
        if generate:
            eos = _eos_ids(model, tokenizer)
            for k, budget in (("verbmem", verbmem_max_new_tokens), ("knowmem_forget", knowmem_max_new_tokens),
                              ("knowmem_retain", knowmem_max_new_tokens)):
                if k not in records or budget <= 0:
                    continue
                prompts = [[int(t) for t in s["prompt_ids"]] for s in splits[k]]
                drafts = [greedy_draft(s, p, r) for s, p, r in zip(splits[k], prompts, records[k])]
                tokens = runner.generate(prompts, max_new_tokens=int(budget), eos_token_ids=eos, drafts=drafts)
                decoded = tokenizer.batch_decode(tokens, skip_special_tokens=True, clean_up_tokenization_spaces=True)
                texts[k] = [cut_at_stopwords(t, stopwords) if k != "verbmem" else t.strip() for t in decoded]
    finally:
        model.train(was_training)

    results: dict[str, dict[str, Any]] = {}

    def idx(k: str) -> list[str]:
        return [str(s.get("index", i)) for i, s in enumerate(splits[k])]

    for k, key in (("verbmem", "forget_verbmem_ROUGE"), ("knowmem_forget", "forget_knowmem_ROUGE"), ("knowmem_retain", "retain_knowmem_ROUGE")):
        if k in texts:
            results[key] = rouge_entry(texts[k], [s["ground_truth"] for s in splits[k]], idx(k))
    if "verbmem" in records:
        results["extraction_strength"] = _entry({i: extraction_strength(r.correct) for i, r in zip(idx("verbmem"), records["verbmem"])})
        results["exact_memorization"] = _entry({i: exact_memorisation(r.correct) for i, r in zip(idx("verbmem"), records["verbmem"])})
    if "privleak_forget" in records and "privleak_holdout" in records:
        attacks = {
            "mia_min_k": lambda r, s: min_k_score(r.logp, mia_k),
            "mia_min_k_plus_plus": lambda r, s: min_k_plus_plus_score(r.logp, r.mu, r.sigma, mia_k),
            "mia_loss": lambda r, s: loss_score(r.logp),
            "mia_zlib": lambda r, s: zlib_score(r.logp, s["text"]),
        }
        for key, fn in attacks.items():
            sides = {side: _entry({i: fn(r, s) for i, r, s in zip(idx(f"privleak_{side}"), records[f"privleak_{side}"], splits[f"privleak_{side}"])})
                     for side in ("forget", "holdout")}
            auc = mia_auc([v["score"] for v in sides["forget"]["value_by_index"].values()],
                          [v["score"] for v in sides["holdout"]["value_by_index"].values()])
            results[key] = {"agg_value": auc, "auc": auc, **sides}
        results["privleak"] = privleak_result(results, load_muse_retain_logs(retain_logs_path), privleak_attack, privleak_ref_auc)
    return results


def muse_summary(results: dict[str, dict[str, Any]]) -> dict[str, float | None]:
    """Aggregates only (MUSE_SUMMARY.json); NaN becomes ``None``."""
    return tofu_summary(results)
