"""Membership-inference attacks on causal LMs and PrivLeak (DESIGN §6).

Members are forget samples, non-members holdout samples. Every attack turns one sample's
per-token answer values into a score with the convention **higher score = more
member-like**, and the AUC is ``roc_auc_score(y, score)`` with ``y = 1`` for members. This
is the same number as the reference framework's AUC (which scores with losses, lower = member,
and labels forget 0 / holdout 1); only the sign of per-sample scores differs.

- LOSS: ``mean(logp) = −NLL``.
- ZLib: ``−NLL / len(zlib.compress(text))`` (Carlini et al. 2021).
- Min-K%: mean of the lowest ``max(1, floor(k·n))`` token log-probs (k = 0.4).
- Min-K%++: the same over standardised log-probs ``(logp_t − μ_t) / σ_t``, with ``μ_t`` and
  ``σ_t`` the mean and standard deviation of ``log p(v)`` under the model's next-token
  distribution ``p`` at position t (Zhang et al. 2024).
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import numpy as np
import torch

from obliviate.registry import METRICS

#: Variance floor of Min-K%++ (as the reference framework: σ ≥ 1e-3).
MIN_VARIANCE = 1e-6


def _as_1d(values: Sequence[float] | np.ndarray) -> np.ndarray:
    return np.asarray(values, dtype=np.float64).reshape(-1)


def token_mu_sigma(log_probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std of ``log p(v)`` under ``p`` for each row of a log-softmax.

    Args:
        log_probs: Log-softmax over the vocabulary ``[n, v]``.

    Returns:
        ``mu [n] = Σ_v p·log p`` and ``sigma [n] = sqrt(max(Σ_v p·(log p − mu)², 1e-6))``
        (centred form: no cancellation).
    """
    probs = log_probs.exp()  # [n, v]
    mu = (probs * log_probs).sum(-1)  # [n]
    var = (probs * (log_probs - mu.unsqueeze(-1)).square()).sum(-1)  # [n]
    return mu, var.clamp_min(MIN_VARIANCE).sqrt()


@METRICS.register("mia_loss", track="llm", higher_is_better=None, needs=("answer_logprobs", "holdout"))
def loss_score(logp: Sequence[float] | np.ndarray) -> float:
    """LOSS attack score ``mean(logp) = −NLL`` (NaN for an empty answer)."""
    logp = _as_1d(logp)
    return float(logp.mean()) if logp.size else float("nan")


def zlib_entropy(text: str) -> int:
    """Length in bytes of the zlib-compressed UTF-8 text."""
    return len(zlib.compress(text.encode("utf-8")))


@METRICS.register("mia_zlib", track="llm", higher_is_better=None, needs=("answer_logprobs", "answer_text", "holdout"))
def zlib_score(logp: Sequence[float] | np.ndarray, text: str) -> float:
    """ZLib attack score ``−NLL / zlib_entropy(text)`` (the reference's ``loss / zlib``, negated)."""
    return loss_score(logp) / zlib_entropy(text)


def _lowest_k_mean(values: np.ndarray, k: float) -> float:
    if not 0 < k <= 1:
        raise ValueError(f"k must be in (0, 1], got {k}")
    if values.size == 0:
        return float("nan")
    num = max(1, int(values.size * k))
    return float(np.sort(values)[:num].mean())


@METRICS.register("mia_min_k", track="llm", higher_is_better=None, needs=("answer_logprobs", "holdout"))
def min_k_score(logp: Sequence[float] | np.ndarray, k: float = 0.4) -> float:
    """Min-K% score: mean of the ``max(1, floor(k·n))`` lowest token log-probs."""
    return _lowest_k_mean(_as_1d(logp), k)


@METRICS.register(
    "mia_min_k_plus_plus", track="llm", higher_is_better=None, needs=("answer_logprobs", "token_mu_sigma", "holdout")
)
def min_k_plus_plus_score(
    logp: Sequence[float] | np.ndarray, mu: Sequence[float] | np.ndarray, sigma: Sequence[float] | np.ndarray, k: float = 0.4
) -> float:
    """Min-K%++ score: Min-K% over ``(logp_t − mu_t) / sigma_t``.

    Args:
        logp: Token log-probs of the labels ``[n]``.
        mu: ``E_{v~p_t}[log p_t(v)]`` per token ``[n]``.
        sigma: Standard deviation of ``log p_t(v)`` under ``p_t`` per token ``[n]``.
        k: Fraction of the lowest standardised values averaged.
    """
    logp, mu, sigma = _as_1d(logp), _as_1d(mu), _as_1d(sigma)
    if not logp.shape == mu.shape == sigma.shape:
        raise ValueError(f"logp, mu, sigma shapes differ: {logp.shape}, {mu.shape}, {sigma.shape}")
    return _lowest_k_mean((logp - mu) / np.maximum(sigma, np.sqrt(MIN_VARIANCE)), k)


def mia_auc(member_scores: Sequence[float] | np.ndarray, nonmember_scores: Sequence[float] | np.ndarray) -> float:
    """ROC AUC of separating members from non-members; higher score = member.

    1.0: every forget sample looks more member-like than every holdout sample; 0.5: no
    signal. NaN scores are dropped; NaN if either side is empty.
    """
    from sklearn.metrics import roc_auc_score

    m, n = _as_1d(member_scores), _as_1d(nonmember_scores)
    m, n = m[np.isfinite(m)], n[np.isfinite(n)]
    if m.size == 0 or n.size == 0:
        return float("nan")
    y = np.concatenate([np.ones(m.size), np.zeros(n.size)])
    return float(roc_auc_score(y, np.concatenate([m, n])))


@METRICS.register("privleak", track="llm", higher_is_better=None, ideal=0.0, needs=("mia_min_k", "retain_logs"))
def privleak(auc: float, auc_retrain: float) -> float:
    """PrivLeak ``(AUC − AUC_retrain) / AUC_retrain × 100`` (0 is ideal).

    Positive: the forget set is more recognisable than under the retrained model
    (under-unlearning); negative: less (over-unlearning).
    """
    if not (np.isfinite(auc) and np.isfinite(auc_retrain)) or auc_retrain == 0:
        return float("nan")
    return float((auc - auc_retrain) / auc_retrain * 100.0)
