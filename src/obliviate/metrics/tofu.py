"""TOFU metrics (DESIGN §6 "LLM"): pure functions over per-sample values.

Everything here works on numbers the evaluation runner (:mod:`obliviate.metrics.runner`)
already extracted from ONE teacher-forced pass per sequence, so each function is easy to
check by hand and never touches a model:

- answer log-probs ``logp`` (one float per answer token); the length-normalised answer
  probability is ``p = exp(mean(logp)) = exp(−NLL)``;
- per-sample truth ratios; greedy generations (strings) for ROUGE.

Conventions: inputs of the ``truth_ratio`` / ``normalised_probability`` functions are
length-normalised log-probabilities ``log p = −NLL`` (computing in log space keeps ratios of
tiny probabilities exact). An empty answer gives NaN; aggregates ignore NaN samples.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from obliviate.io import atomic_write_json, read_json
from obliviate.metrics import METRICS

#: The nine inputs of model utility, by reference-framework key (DESIGN §6).
MODEL_UTILITY_KEYS: tuple[str, ...] = (
    "retain_Q_A_Prob",
    "retain_Q_A_ROUGE",
    "retain_Truth_Ratio",
    "ra_Q_A_Prob_normalised",
    "ra_Q_A_ROUGE",
    "ra_Truth_Ratio",
    "wf_Q_A_Prob_normalised",
    "wf_Q_A_ROUGE",
    "wf_Truth_Ratio",
)


def _as_1d(values: Sequence[float] | np.ndarray) -> np.ndarray:
    return np.asarray(values, dtype=np.float64).reshape(-1)


def nanmean(values: Sequence[float | None] | np.ndarray) -> float:
    """Mean over finite values (``None``/NaN skipped); NaN when none is finite."""
    arr = np.asarray([np.nan if v is None else v for v in values], dtype=np.float64).reshape(-1)
    arr = arr[np.isfinite(arr)]
    return float(arr.mean()) if arr.size else float("nan")


def mean_nll(logp: Sequence[float] | np.ndarray) -> float:
    """Mean answer-token negative log-likelihood (NaN for an empty answer).

    Args:
        logp: Per-token answer log-probs ``[n]``.
    """
    logp = _as_1d(logp)
    return float(-logp.mean()) if logp.size else float("nan")


@METRICS.register("probability", track="llm", higher_is_better=None, needs=("answer_logprobs",))
def answer_probability(logp: Sequence[float] | np.ndarray) -> float:
    """Length-normalised answer probability ``p = exp(−mean NLL)`` of one sample.

    Higher on retain data is better; on the forget set the target is the retrained model's
    value (hence ``higher_is_better=None``).
    """
    nll = mean_nll(logp)
    return float(np.exp(-nll)) if np.isfinite(nll) else float("nan")


@METRICS.register(
    "probability_normalised", track="llm", higher_is_better=True, needs=("answer_logprobs", "perturbed_logprobs")
)
def normalised_probability(logp_correct: float, logp_perturbed: Sequence[float] | np.ndarray) -> float:
    """``p_correct / (p_correct + Σ p_perturbed)`` (real authors / world facts).

    Args:
        logp_correct: ``log p`` (= −mean NLL) of the correct answer.
        logp_perturbed: ``log p`` of each perturbed (wrong) answer ``[k]``.

    Returns:
        The normalised probability in [0, 1], computed with a log-sum-exp (no underflow).
    """
    wrong = _as_1d(logp_perturbed)
    if not np.isfinite(logp_correct) or wrong.size == 0 or not np.isfinite(wrong).all():
        return float("nan")
    all_lp = np.concatenate([[logp_correct], wrong])
    return float(np.exp(logp_correct - np.logaddexp.reduce(all_lp)))


@METRICS.register("truth_ratio", track="llm", higher_is_better=None, needs=("answer_logprobs", "perturbed_logprobs"))
def truth_ratio(logp_true: float, logp_perturbed: Sequence[float] | np.ndarray) -> float:
    """Per-sample truth ratio ``TR = geomean(p_perturbed) / p_true`` (log space).

    ``p_true`` is the paraphrased answer's probability on forget/retain and the original
    answer's on real authors / world facts.

    Args:
        logp_true: ``log p`` of the true (paraphrased or original) answer.
        logp_perturbed: ``log p`` of each perturbed answer ``[k]``.

    Returns:
        ``exp(mean(logp_perturbed) − logp_true)``; NaN if an input is missing.
    """
    wrong = _as_1d(logp_perturbed)
    if not np.isfinite(logp_true) or wrong.size == 0 or not np.isfinite(wrong).all():
        return float("nan")
    return float(np.exp(wrong.mean() - logp_true))


@METRICS.register("truth_ratio_closer_to_1", track="llm", higher_is_better=True, needs=("truth_ratio",))
def truth_ratio_forget_agg(tr: Sequence[float] | np.ndarray) -> float:
    """Forget aggregate ``mean(min(TR, 1/TR))`` (1 = true and false answers equally likely)."""
    tr = _as_1d(tr)
    tr = tr[np.isfinite(tr) & (tr > 0)]
    return float(np.minimum(tr, 1.0 / tr).mean()) if tr.size else float("nan")


@METRICS.register("truth_ratio_true_better", track="llm", higher_is_better=True, needs=("truth_ratio",))
def truth_ratio_retain_agg(tr: Sequence[float] | np.ndarray) -> float:
    """Retain / real-authors / world-facts aggregate ``mean(max(0, 1 − TR))``."""
    tr = _as_1d(tr)
    tr = tr[np.isfinite(tr)]
    return float(np.maximum(0.0, 1.0 - tr).mean()) if tr.size else float("nan")


@METRICS.register("rouge", track="llm", higher_is_better=None, needs=("generations", "answers"))
def rouge_scores(generations: Sequence[str], references: Sequence[str]) -> list[dict[str, float]]:
    """ROUGE of greedy generations against the gold answers (``rouge-score``, stemming on).

    Args:
        generations: Decoded new tokens, one string per sample.
        references: Gold answers, same order.

    Returns:
        Per sample ``{"rougeL_recall", "rouge1_recall", "rougeL_f1"}``; the TOFU metric is
        ``rougeL_recall`` = LCS(reference, generation) / len(reference tokens).
    """
    from obliviate.extras import require

    rouge_scorer = require("rouge_score.rouge_scorer", "ROUGE in the TOFU evaluation (eval.tofu.generate=false skips it)")

    if len(generations) != len(references):
        raise ValueError(f"{len(generations)} generations but {len(references)} references")
    scorer = rouge_scorer.RougeScorer(["rouge1", "rougeL"], use_stemmer=True)
    out = []
    for gen, ref in zip(generations, references):
        s = scorer.score(ref, gen)  # score(target, prediction)
        out.append({"rougeL_recall": s["rougeL"].recall, "rouge1_recall": s["rouge1"].recall, "rougeL_f1": s["rougeL"].fmeasure})
    return out


def rouge_l_recall(generations: Sequence[str], references: Sequence[str]) -> list[float]:
    """ROUGE-L recall per sample (see :func:`rouge_scores`)."""
    return [s["rougeL_recall"] for s in rouge_scores(generations, references)]


@METRICS.register("forget_quality", track="llm", higher_is_better=True, needs=("forget_truth_ratio", "retain_logs"))
def forget_quality(tr_model: Sequence[float] | np.ndarray, tr_retain: Sequence[float] | np.ndarray) -> float:
    """KS two-sample p-value between forget truth ratios of the model and the retain model.

    Args:
        tr_model: Per-sample forget truth ratios of the evaluated model.
        tr_retain: The same for the retain (gold-standard) model, from its TOFU_EVAL.json.

    Returns:
        ``scipy.stats.ks_2samp(tr_model, tr_retain).pvalue`` (NaN samples dropped); high =
        indistinguishable from the retain model. The KS statistic is invariant under the
        monotone map ``TR -> 1/TR``, so this equals the reference framework's value.
    """
    from scipy.stats import ks_2samp

    a, b = _as_1d(tr_model), _as_1d(tr_retain)
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    if a.size == 0 or b.size == 0:
        return float("nan")
    return float(ks_2samp(a, b).pvalue)


@METRICS.register("model_utility", track="llm", higher_is_better=True, needs=MODEL_UTILITY_KEYS)
def model_utility(values: Mapping[str, float] | Sequence[float]) -> float:
    """Harmonic mean of the nine utility values (Prob, ROUGE, TR on retain / ra / wf).

    Args:
        values: The nine aggregate values, as a mapping keyed by :data:`MODEL_UTILITY_KEYS`
            (all required) or as a plain sequence.

    Returns:
        ``n / Σ 1/x``; 0 if any value is 0 (the harmonic mean's limit); NaN if any is NaN.

    Raises:
        KeyError: A mapping lacks one of the nine keys.
    """
    if isinstance(values, Mapping):
        missing = [k for k in MODEL_UTILITY_KEYS if k not in values]
        if missing:
            raise KeyError(f"model utility needs {', '.join(missing)}")
        vals = _as_1d([values[k] for k in MODEL_UTILITY_KEYS])
    else:
        vals = _as_1d(values)
    if vals.size == 0 or not np.isfinite(vals).all():
        return float("nan")
    if (vals < 0).any():
        raise ValueError(f"model utility inputs must be >= 0, got {vals.tolist()}")
    if (vals == 0).any():
        return 0.0
    return float(vals.size / np.sum(1.0 / vals))


# ---------------------------------------------------------------------- result assembly
@dataclass
class SplitValues:
    """Per-sample values of one TOFU split, as the runner extracted them.

    Records are duck-typed (:class:`obliviate.metrics.runner.TokenRecord`: ``logp``,
    ``logp_mean``, ``correct``, ``mu``, ``sigma``).

    Attributes:
        indices: Sample keys of ``value_by_index``.
        qa: Record of the original answer per sample.
        answers: Gold answer texts (ROUGE reference, ZLib text).
        para: Record of the paraphrased answer per sample, if scored.
        pert: Records of the perturbed answers per sample, if scored.
        generations: Greedy generations per sample, if generated.
    """

    indices: list[str]
    qa: list[Any]
    answers: list[str]
    para: list[Any] | None = None
    pert: list[list[Any]] | None = None
    generations: list[str] | None = None


def _entry(by_index: dict[str, dict[str, Any]], agg: float | None = None) -> dict[str, Any]:
    scores = [v["score"] for v in by_index.values()]
    return {"agg_value": nanmean(scores) if agg is None else agg, "value_by_index": by_index}


def _prob_entry(indices: list[str], records: list[Any]) -> dict[str, Any]:
    by = {}
    for i, r in zip(indices, records):
        p = float(np.exp(r.logp_mean))
        by[i] = {"score": p, "prob": p, "avg_loss": -r.logp_mean}
    return _entry(by)


def _pert_entry(indices: list[str], pert: list[list[Any]]) -> dict[str, Any]:
    by = {}
    for i, recs in zip(indices, pert):
        probs = [float(np.exp(r.logp_mean)) for r in recs]
        by[i] = {"score": nanmean(probs), "prob": probs, "avg_loss": [-r.logp_mean for r in recs]}
    return _entry(by)


def split_results(name: str, sv: SplitValues) -> dict[str, dict[str, Any]]:
    """Reference-schema entries of one split (``forget``, ``retain``, ``ra`` or ``wf``).

    Keys: ``<name>_Q_A_Prob``, ``_Q_A_PARA_Prob``, ``_Q_A_PERT_Prob``, ``_Q_A_ROUGE``; the truth
    ratio as ``forget_truth_ratio`` (closer-to-1 aggregate) or ``<name>_Truth_Ratio``
    (true-better aggregate); ``<name>_Q_A_Prob_normalised`` for ``ra`` / ``wf``.
    """
    out: dict[str, dict[str, Any]] = {f"{name}_Q_A_Prob": _prob_entry(sv.indices, sv.qa)}
    if sv.para is not None:
        out[f"{name}_Q_A_PARA_Prob"] = _prob_entry(sv.indices, sv.para)
    if sv.pert is not None:
        out[f"{name}_Q_A_PERT_Prob"] = _pert_entry(sv.indices, sv.pert)
    if sv.generations is not None:
        by = {}
        for i, gen, ref, s in zip(sv.indices, sv.generations, sv.answers, rouge_scores(sv.generations, sv.answers)):
            by[i] = {"score": s["rougeL_recall"], **s, "generation": gen, "ground_truth": ref}
        out[f"{name}_Q_A_ROUGE"] = _entry(by)
    factual = name in ("ra", "wf")
    true_recs = sv.qa if factual else sv.para
    if sv.pert is not None and true_recs is not None:
        trs = [truth_ratio(t.logp_mean, [r.logp_mean for r in p]) for t, p in zip(true_recs, sv.pert)]
        by = {i: {"score": tr} for i, tr in zip(sv.indices, trs)}
        if name == "forget":
            out["forget_truth_ratio"] = _entry(by, truth_ratio_forget_agg(trs))
        else:
            out[f"{name}_Truth_Ratio"] = _entry(by, truth_ratio_retain_agg(trs))
    if factual and sv.pert is not None:
        norm = [normalised_probability(q.logp_mean, [r.logp_mean for r in p]) for q, p in zip(sv.qa, sv.pert)]
        out[f"{name}_Q_A_Prob_normalised"] = _entry({i: {"score": v, "prob": v} for i, v in zip(sv.indices, norm)})
    return out


def forget_privacy_results(forget: SplitValues, holdout: SplitValues | None, k: float = 0.4) -> dict[str, dict[str, Any]]:
    """Memorisation on the forget set and the four MIA AUCs (forget = members, holdout = not).

    Each ``mia_*`` entry is ``{"agg_value": auc, "auc": auc, "forget": {value_by_index},
    "holdout": {value_by_index}}`` (scores: higher = more member-like).
    """
    from obliviate.metrics.memorisation import exact_memorisation, extraction_strength
    from obliviate.metrics.mia_llm import loss_score, mia_auc, min_k_plus_plus_score, min_k_score, zlib_score

    out: dict[str, dict[str, Any]] = {
        "extraction_strength": _entry({i: {"score": extraction_strength(r.correct)} for i, r in zip(forget.indices, forget.qa)}),
        "exact_memorization": _entry({i: {"score": exact_memorisation(r.correct)} for i, r in zip(forget.indices, forget.qa)}),
    }
    if holdout is None:
        return out
    attacks = {
        "mia_loss": lambda r, text: loss_score(r.logp),
        "mia_zlib": lambda r, text: zlib_score(r.logp, text),
        "mia_min_k": lambda r, text: min_k_score(r.logp, k),
        "mia_min_k_plus_plus": lambda r, text: min_k_plus_plus_score(r.logp, r.mu, r.sigma, k),
    }
    for key, fn in attacks.items():
        sides = {}
        for side, sv in (("forget", forget), ("holdout", holdout)):
            sides[side] = _entry({i: {"score": fn(r, t)} for i, r, t in zip(sv.indices, sv.qa, sv.answers)})
        scores = [[v["score"] for v in sides[s]["value_by_index"].values()] for s in ("forget", "holdout")]
        auc = mia_auc(*scores)
        out[key] = {"agg_value": auc, "auc": auc, **sides}
    return out


def _warn(message: str) -> None:
    warnings.warn(message, UserWarning, stacklevel=3)


def retain_reference_results(
    results: dict[str, dict[str, Any]], retain_logs: dict[str, Any] | None, privleak_ref_auc: float | None = 0.5
) -> dict[str, dict[str, Any]]:
    """``forget_quality``, ``privleak`` and ``model_utility`` from computed entries.

    Never raises on missing inputs: the value is ``None`` (null in JSON) with a warning.

    Args:
        results: Entries from :func:`split_results` / :func:`forget_privacy_results`.
        retain_logs: The retain model's TOFU_EVAL.json content (``forget_truth_ratio``
            per-sample scores; ``mia_min_k`` AUC), or ``None``.
        privleak_ref_auc: Retrain AUC used for PrivLeak when ``retain_logs`` has none (the
            reference framework's default is 0.5); ``None`` = report null instead.
    """
    out: dict[str, dict[str, Any]] = {}
    ftr = results.get("forget_truth_ratio")
    ref_tr = None
    if retain_logs is not None:
        by = (retain_logs.get("forget_truth_ratio") or {}).get("value_by_index") or {}
        ref_tr = [v.get("score") for v in by.values() if isinstance(v, dict) and v.get("score") is not None]
    if ftr is None:
        _warn("forget_quality skipped: no forget truth ratios (forget samples need paraphrased and perturbed answers)")
        out["forget_quality"] = {"agg_value": None}
    elif not ref_tr:
        _warn("forget_quality skipped: retain model logs with per-sample forget_truth_ratio not given (retain_logs_path)")
        out["forget_quality"] = {"agg_value": None}
    else:
        mine = [v["score"] for v in ftr["value_by_index"].values()]
        out["forget_quality"] = {"agg_value": forget_quality(mine, ref_tr), "n": len(mine), "n_retain": len(ref_tr)}
    if "mia_min_k" in results:
        from obliviate.metrics.mia_llm import privleak

        ref = (retain_logs or {}).get("mia_min_k", {}) or {}
        source = "retain_logs"
        ref_auc = ref.get("agg_value") if isinstance(ref, dict) else None
        if ref_auc is None:
            source, ref_auc = "default", privleak_ref_auc
            _warn(f"privleak: no retain-model mia_min_k AUC in the retain logs; using reference AUC {ref_auc}")
        value = None if ref_auc is None else privleak(results["mia_min_k"]["agg_value"], float(ref_auc))
        out["privleak"] = {"agg_value": value, "ref_auc": ref_auc, "ref_source": source}
    missing = [k for k in MODEL_UTILITY_KEYS if k not in results]
    if missing:
        _warn(f"model_utility skipped: missing {', '.join(missing)}")
        out["model_utility"] = {"agg_value": None, "missing": missing}
    else:
        out["model_utility"] = {"agg_value": model_utility({k: results[k]["agg_value"] for k in MODEL_UTILITY_KEYS})}
    return out


# ---------------------------------------------------------------------- files
EVAL_FILE, SUMMARY_FILE = "TOFU_EVAL.json", "TOFU_SUMMARY.json"


def load_retain_logs(path: str | os.PathLike | None) -> dict[str, Any] | None:
    """The retain model's TOFU_EVAL.json (a file, or a directory holding it); ``None`` + warning if unusable."""
    if path is None:
        return None
    p = Path(path)
    p = p / EVAL_FILE if p.is_dir() else p
    try:
        logs = read_json(p)
    except (OSError, ValueError) as exc:
        warnings.warn(f"retain logs {p} unusable ({exc}); forget_quality needs them", UserWarning, stacklevel=2)
        return None
    return logs if isinstance(logs, dict) else None


def tofu_summary(results: dict[str, dict[str, Any]]) -> dict[str, float | None]:
    """Aggregate values only (the TOFU_SUMMARY.json content); NaN becomes ``None``."""
    out: dict[str, float | None] = {}
    for key, entry in results.items():
        value = entry.get("agg_value") if isinstance(entry, dict) else None
        out[key] = float(value) if value is not None and np.isfinite(value) else None
    return out


def save_tofu_results(results: dict[str, dict[str, Any]], output_dir: str | os.PathLike) -> tuple[Path, Path]:
    """Write TOFU_EVAL.json (everything) and TOFU_SUMMARY.json (aggregates) atomically."""
    out = Path(output_dir)
    return atomic_write_json(out / EVAL_FILE, results), atomic_write_json(out / SUMMARY_FILE, tofu_summary(results))
