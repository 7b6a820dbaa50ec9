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

from collections.abc import Mapping, Sequence

import numpy as np

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
    from rouge_score import rouge_scorer

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
