"""The retrain-free tuning objective of ``obliviate tune`` (docs/metrics.md, section 4).

A user who could retrain would not need unlearning, so the objective asks a question that
needs no retrained model: *does the forget set now look like data the model never saw, while
the retained data still looks as it did?* "Never seen" is represented by held-out data:

- **vision**: images carved from the training side that no model ever trained on (never the
  test split). Random forgetting compares the forget images with these held-out images
  (their own labels); class-wise forgetting compares them with held-out images of *other*
  classes scored on a forgotten class (the retrained model never learned that class, so its
  images should get what any image gets for a class it does not belong to);
- **LLM**: TOFU's holdout authors (fictitious authors that were never in the training data),
  or a user's holdout file in the same format.

Every function here is a pure function of per-sample values (no model, no data loader), so the
arithmetic can be checked by hand. Lower is better for every objective (0 = indistinguishable
and no retain loss beyond the tolerance).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from obliviate.registry import METRICS
from obliviate.metrics.classification import accuracy

#: The six teacher-forced inputs of model utility (the nine minus the three ROUGE values).
TF_UTILITY_KEYS: tuple[str, ...] = (
    "retain_Q_A_Prob",
    "retain_Truth_Ratio",
    "ra_Q_A_Prob_normalised",
    "ra_Truth_Ratio",
    "wf_Q_A_Prob_normalised",
    "wf_Truth_Ratio",
)
#: Default tolerated relative drop of the retain measure (RA on vision, teacher-forced utility on LLMs).
DEFAULT_TOLERANCE = {"vision": 0.02, "llm": 0.1}
#: Default weight of the penalty per unit of relative drop beyond the tolerance.
DEFAULT_PENALTY_WEIGHT = 10.0
#: Confidences below this are equal for the vision KS term: no metric (accuracy, the MIA SVC on
#: confidences in [0, 1]) tells them apart, and a class the model never learned gets vanishing
#: probabilities whose exact size means nothing (on digits, class 9: the retrained model's
#: p(9 | image of 9) and p(9 | other image) both have quartiles below 1e-5, yet KS 0.83 on raw values).
CONFIDENCE_FLOOR = 1e-3


def _finite(values: Sequence[float] | np.ndarray) -> np.ndarray:
    arr = np.asarray([np.nan if v is None else v for v in values], dtype=np.float64).reshape(-1)
    return arr[np.isfinite(arr)]


def ks_statistic(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov statistic ``sup_x |F_a(x) − F_b(x)|`` (NaN/None dropped).

    0 = identical empirical distributions, 1 = disjoint ranges. Invariant under any strictly
    monotone map of the values (confidence ``exp(−loss)`` or loss give the same statistic).

    Returns:
        The statistic in [0, 1]; NaN when a side has no finite value.
    """
    x, y = np.sort(_finite(a)), np.sort(_finite(b))
    if x.size == 0 or y.size == 0:
        return float("nan")
    grid = np.concatenate([x, y])
    fx = np.searchsorted(x, grid, side="right") / x.size
    fy = np.searchsorted(y, grid, side="right") / y.size
    return float(np.max(np.abs(fx - fy)))


def retain_penalty(value: float, reference: float, tolerance: float, weight: float = DEFAULT_PENALTY_WEIGHT) -> float:
    """``weight · max(0, 1 − value/reference − tolerance)``: the relative drop beyond the tolerance.

    Args:
        value: The retain measure of the unlearned model (RA, or teacher-forced utility).
        reference: The same measure of the original / target model.
        tolerance: Tolerated relative drop (0.02 = 2 %).
        weight: Penalty per unit of relative drop beyond the tolerance.

    Returns:
        0 while the drop is within the tolerance (also for any gain); ``weight`` if the measure
        fell to zero from ``reference`` with no tolerance; NaN when ``value`` is NaN.
    """
    if not np.isfinite(value):
        return float("nan")
    if not np.isfinite(reference) or reference <= 0:
        return 0.0
    return float(weight * max(0.0, 1.0 - value / reference - tolerance))


def reference_labels(labels: Sequence[int] | np.ndarray, forget_classes: Sequence[int] | None, seed: int = 0) -> np.ndarray:
    """The labels the held-out images are scored on.

    Random forgetting (no ``forget_classes``): their own labels. Class-wise forgetting: a
    forgotten class (images of it are never held out), assigned in turn after a seeded shuffle
    when several classes are forgotten.
    """
    labels = np.asarray(labels, dtype=np.int64)
    if not forget_classes:
        return labels.copy()
    classes = np.asarray(sorted(int(c) for c in forget_classes), dtype=np.int64)
    order = np.random.default_rng(seed).permutation(len(labels))
    out = np.empty(len(labels), dtype=np.int64)
    out[order] = classes[np.arange(len(labels)) % len(classes)]
    return out


def mia_view(conf_retain: np.ndarray, conf_heldout: np.ndarray, conf_forget: np.ndarray, conf_reference: np.ndarray,
             seed: int = 0) -> tuple[float, float]:
    """The MIA-efficacy attacker's view of the forget set and of the reference samples, with
    held-out images in place of the test split (2-fold, so no reference sample is scored by an
    attacker that saw it).

    The held-out positions are split in two seeded halves A/B. The attacker of
    :func:`obliviate.metrics.mia.mia_efficacy` (RBF SVC on the true-class confidence; members =
    retain, non-members = held-out half A, balanced) scores the forget samples and the
    reference confidences of half B; then A and B swap.

    Returns:
        ``(efficacy on forget, efficacy on the reference samples)`` in % (predicted
        non-members); each is the mean over the two folds (the reference one over all samples).
    """
    from obliviate.metrics.mia import mia_efficacy

    conf_heldout, conf_reference = np.asarray(conf_heldout, dtype=np.float64), np.asarray(conf_reference, dtype=np.float64)
    n = len(conf_heldout)
    if n < 2 or len(conf_reference) != n:
        raise ValueError(f"mia_view needs >= 2 held-out samples with one reference confidence each (got {n} and {len(conf_reference)})")
    perm = np.random.default_rng(seed).permutation(n)
    folds = (perm[: n // 2], perm[n // 2 :])
    eff_forget, hits, total = [], 0.0, 0
    for train, other in (folds, folds[::-1]):
        eff_forget.append(mia_efficacy(conf_retain, conf_heldout[train], conf_forget, seed=seed))
        eff = mia_efficacy(conf_retain, conf_heldout[train], conf_reference[other], seed=seed)
        hits += eff * len(other) / 100.0
        total += len(other)
    return float(np.mean(eff_forget)), float(100.0 * hits / total)


@METRICS.register("retrain_free_vision", track="vision", higher_is_better=False, needs=("forget", "retain", "heldout"))
def vision_objective(
    forget: Mapping[str, np.ndarray],
    reference: Mapping[str, np.ndarray],
    conf_retain: np.ndarray,
    conf_heldout: np.ndarray,
    ra: float,
    ra_original: float,
    ha: float | None = None,
    ha_original: float | None = None,
    *,
    tolerance: float = DEFAULT_TOLERANCE["vision"],
    weight: float = DEFAULT_PENALTY_WEIGHT,
    seed: int = 0,
) -> dict[str, float]:
    """Retrain-free objective of a classifier (lower is better).

    ``objective = mean(|acc_f − acc_ref| / 100, KS(max(conf_f, floor), max(conf_ref, floor)), |MIA_f − MIA_ref| / 100)
    + penalty(RA, RA_original) + penalty(HA, HA_original)`` with ``penalty`` of
    :func:`retain_penalty` and ``floor`` = :data:`CONFIDENCE_FLOOR`.

    Args:
        forget: ``{"pred", "label", "confidence"}`` of the forget samples (true-class confidence).
        reference: The same for the held-out samples scored on their reference labels
            (:func:`reference_labels`): ``pred`` (argmax), ``label`` (the reference label) and
            ``confidence`` (softmax probability of the reference label).
        conf_retain: True-class confidences of the retain samples (the attacker's members).
        conf_heldout: True-class confidences of the held-out samples (the attacker's non-members).
        ra: Retain accuracy (%) of the evaluated model.
        ra_original: Retain accuracy (%) of the original model.
        ha: Held-out accuracy (%, own labels) of the evaluated model: the stand-in of TA.
        ha_original: The same for the original model (``None``: no held-out term).
        tolerance: Tolerated relative drop of RA.
        weight: Penalty weight.
        seed: Seed of the attacker's folds and balancing subsamples.

    Returns:
        The terms: ``acc_forget``, ``acc_reference``, ``acc_gap``, ``ks``, ``mia_forget``,
        ``mia_reference``, ``mia_gap``, ``distance`` (mean of the three gaps), ``RA``,
        ``RA_original``, ``HA``, ``HA_original``, ``penalty`` and ``objective``.
    """
    acc_f = accuracy(forget["pred"], forget["label"])
    acc_r = accuracy(reference["pred"], reference["label"])
    floor = CONFIDENCE_FLOOR
    ks = ks_statistic(np.maximum(np.asarray(forget["confidence"], dtype=np.float64), floor),
                      np.maximum(np.asarray(reference["confidence"], dtype=np.float64), floor))
    mia_f, mia_r = mia_view(np.asarray(conf_retain), np.asarray(conf_heldout), np.asarray(forget["confidence"]),
                            np.asarray(reference["confidence"]), seed)
    gaps = {"acc_gap": abs(acc_f - acc_r) / 100.0, "ks": ks, "mia_gap": abs(mia_f - mia_r) / 100.0}
    distance = float(np.mean(list(gaps.values())))
    penalty = retain_penalty(ra, ra_original, tolerance, weight)
    if ha is not None and ha_original is not None:
        penalty += retain_penalty(ha, ha_original, tolerance, weight)
    return {"acc_forget": acc_f, "acc_reference": acc_r, **gaps, "mia_forget": mia_f, "mia_reference": mia_r, "distance": distance,
            "RA": float(ra), "RA_original": float(ra_original), "HA": None if ha is None else float(ha),
            "HA_original": None if ha_original is None else float(ha_original), "penalty": penalty, "objective": distance + penalty}


def _scores(results: Mapping[str, Any], key: str) -> list[float] | None:
    entry = results.get(key)
    if not isinstance(entry, Mapping) or "value_by_index" not in entry:
        return None
    return [v.get("score") for v in entry["value_by_index"].values()]


def teacher_forced_utility(results: Mapping[str, Any]) -> float:
    """Harmonic mean of the six teacher-forced utility values (:data:`TF_UTILITY_KEYS`).

    Model utility without its three ROUGE values: retain probability and truth ratio, real
    authors' and world facts' normalised probability and truth ratio (TOFU definitions).
    """
    from obliviate.metrics.tofu import model_utility

    missing = [k for k in TF_UTILITY_KEYS if k not in results]
    if missing:
        raise KeyError(f"teacher-forced utility needs {', '.join(missing)}")
    return model_utility([results[k]["agg_value"] for k in TF_UTILITY_KEYS])


@METRICS.register("retrain_free_llm", track="llm", higher_is_better=False, needs=("forget", "holdout", "retain", "ra", "wf"))
def llm_objective(results: Mapping[str, Any], utility_target: float, *, tolerance: float = DEFAULT_TOLERANCE["llm"],
                  weight: float = DEFAULT_PENALTY_WEIGHT) -> dict[str, float | None]:
    """Retrain-free objective of a causal LM (lower is better).

    ``objective = mean(KS(p_f, p_h)[, KS(p_f^para, p_h^para), KS(p_f^pert, p_h^pert), KS(TR_f, TR_h)])
    + weight · max(0, 1 − U / U_target − tolerance)``, where ``p`` is the per-sample answer
    probability, ``para`` / ``pert`` the paraphrased / perturbed answers' probability (the
    ingredients of the truth ratio), ``h`` the holdout authors, ``TR`` the truth ratio and
    ``U`` the teacher-forced utility (:func:`teacher_forced_utility`). The bracketed terms
    count only when the holdout file has paraphrased / perturbed answers (TOFU's holdout
    files do not): a paraphrased or perturbed answer is another text than an original answer,
    and comparing its probability with the holdout's original answers ranked trials against
    forget quality on SmolLM2 (docs/benchmarks/tune.md), so like is compared with like only.

    Args:
        results: Reference-schema entries (:func:`obliviate.metrics.tofu.split_results`) of the
            splits ``forget``, ``holdout``, ``retain``, ``ra`` and ``wf``.
        utility_target: ``U`` of the target model (before unlearning).
        tolerance: Tolerated relative drop of ``U``.
        weight: Penalty weight.

    Returns:
        The terms ``ks_prob``, ``ks_para``, ``ks_pert``, ``ks_truth_ratio`` (the last three
        ``None`` without holdout perturbations), ``distance``, ``utility``, ``utility_target``, ``penalty``
        and ``objective``.
    """
    p_f, p_h = _scores(results, "forget_Q_A_Prob"), _scores(results, "holdout_Q_A_Prob")
    if p_f is None or p_h is None:
        raise KeyError("the retrain-free LLM objective needs forget_Q_A_Prob and holdout_Q_A_Prob")
    para_f, pert_f = _scores(results, "forget_Q_A_PARA_Prob"), _scores(results, "forget_Q_A_PERT_Prob")
    para_h, pert_h = _scores(results, "holdout_Q_A_PARA_Prob"), _scores(results, "holdout_Q_A_PERT_Prob")
    if (para_h is not None and para_f is None) or (pert_h is not None and pert_f is None):
        raise KeyError("the holdout has paraphrased / perturbed answers: the retrain-free LLM objective needs the forget set's too")
    tr_f, tr_h = _scores(results, "forget_truth_ratio"), _scores(results, "holdout_Truth_Ratio")
    terms: dict[str, float | None] = {
        "ks_prob": ks_statistic(p_f, p_h),
        "ks_para": ks_statistic(para_f, para_h) if para_h is not None else None,
        "ks_pert": ks_statistic(pert_f, pert_h) if pert_h is not None else None,
        "ks_truth_ratio": ks_statistic(tr_f, tr_h) if tr_f is not None and tr_h is not None else None,
    }
    distance = float(np.mean([v for v in terms.values() if v is not None]))
    utility = teacher_forced_utility(results)
    penalty = retain_penalty(utility, utility_target, tolerance, weight)
    return {**terms, "distance": distance, "utility": utility, "utility_target": float(utility_target), "penalty": penalty,
            "objective": distance + penalty}


def retrain_llm_objective(forget_quality: float, utility: float, utility_target: float, *,
                          tolerance: float = DEFAULT_TOLERANCE["llm"], weight: float = DEFAULT_PENALTY_WEIGHT) -> dict[str, float]:
    """The oracle LLM objective (``tune.objective=retrain``): ``−log10(forget quality) + penalty``.

    Forget quality is the KS-test p-value against the retain model's forget truth ratios (1 =
    indistinguishable), so ``−log10`` is 0 at best and grows by one per decade; the penalty is
    the one of :func:`llm_objective` on the teacher-forced utility.
    """
    fq = float(forget_quality)
    penalty = retain_penalty(utility, utility_target, tolerance, weight)
    value = -np.log10(max(fq, 1e-300)) if np.isfinite(fq) else float("nan")
    return {"forget_quality": fq, "utility": float(utility), "utility_target": float(utility_target), "penalty": penalty,
            "objective": float(value + penalty)}


def teacher_forced_results(model: Any, tokenizer: Any, splits: Mapping[str, Sequence[Mapping[str, Any]]], *, batch_size: int = 8,
                           runner: Any = None) -> dict[str, dict[str, Any]]:
    """Reference-schema entries of every split from ONE teacher-forced pass per sequence (no generation).

    Like :func:`obliviate.metrics.tofu_eval.evaluate_tofu` with ``generate=False``, except that the
    holdout split's paraphrased / perturbed answers are scored too when its samples carry them
    (``holdout_Q_A_PARA_Prob``, ``holdout_Q_A_PERT_Prob``, ``holdout_Truth_Ratio``).

    Args:
        model: The causal LM (eval mode during the call, then restored).
        tokenizer: Its tokenizer (``pad_token_id``).
        splits: Tokenised samples per split (``forget``, ``holdout``, ``retain``, ``ra``, ``wf``), as
            :func:`obliviate.pipelines.llm_eval.load_eval_splits` returns them.
        batch_size: Rows per forward call.
        runner: A :class:`~obliviate.metrics.runner.ForwardRunner` to reuse.

    Returns:
        ``{key: {"agg_value", "value_by_index"}}`` from :func:`obliviate.metrics.tofu.split_results`.
    """
    from obliviate.metrics.runner import ForwardRunner
    from obliviate.metrics.tofu import SplitValues, split_results
    from obliviate.metrics.tofu_eval import SPLIT_ALIASES

    splits = {SPLIT_ALIASES.get(name, name): samples for name, samples in splits.items()}  # real_authors -> ra, ...
    pad = getattr(tokenizer, "pad_token_id", None)
    runner = runner or ForwardRunner(model, batch_size=batch_size, pad_token_id=0 if pad is None else int(pad))
    groups, where = [], []
    for split, samples in splits.items():
        for i, s in enumerate(samples):
            seqs = [s, *([s["paraphrased"]] if s.get("paraphrased") is not None else []), *(s.get("perturbed") or [])]
            groups.append(seqs)
            where.append((split, i))
    was = model.training
    model.eval()
    try:
        records = runner.score(groups)
    finally:
        model.train(was)
    per: dict[str, list[Any]] = {k: [] for k in splits}
    for (split, _), recs in zip(where, records):
        per[split].append(recs)
    out: dict[str, dict[str, Any]] = {}
    for split, samples in splits.items():
        recs = per[split]
        if not samples:
            continue
        n_para = 1 if all(s.get("paraphrased") is not None for s in samples) else 0
        has_pert = all(s.get("perturbed") for s in samples)
        sv = SplitValues(indices=[str(s.get("index", i)) for i, s in enumerate(samples)], qa=[r[0] for r in recs],
                         answers=[str(s.get("answer", "")) for s in samples], para=[r[1] for r in recs] if n_para else None,
                         pert=[r[1 + n_para:] for r in recs] if has_pert else None)
        out.update(split_results(split, sv))
    return out
