"""KL (seed 003): push the forget-set predictions away from the frozen reference.

Loss::

    −γ · mean min(KL_t, max_kl) + α · L_r

``KL_t`` = ``KL(p_θ(·|x_<t) || p_ref(·|x_<t))`` at answer token ``t`` of the forget batch
(prompt and padding positions excluded). With the default ``reduction="token"`` the mean runs
over every answer token of the batch (the seed's snippet averages over all positions at once)
and ``max_kl`` caps each token; with ``reduction="sequence"`` each sequence's mean KL is
taken first, capped by ``max_kl``, then averaged over the batch. Minimising the loss
*maximises* the divergence. ``L_r`` is the retain NLL (or the KL retain term of
:func:`~obliviate.methods._common.retain_loss` with ``retain_loss_type="KL"``).

Boundedness: with the reference fixed, ``KL(p_θ || p_ref) ≤ max_v −log p_ref(v)`` per token,
so this direction of the divergence is bounded (unlike ``KL(p_ref || p_θ)`` or the forget
NLL, which grow without limit); the maximum puts all mass on the reference's least likely
token. ``max_kl`` optionally caps the divergence earlier: past the cap a token (or sequence)
stops contributing gradient. Differences from the seed's snippet: it used the cross entropy
``−Σ p_θ log p_ref`` (= KL + entropy of p_θ) averaged over every position including prompt
and padding; this is the true KL over answer tokens only.
"""

from __future__ import annotations

from dataclasses import dataclass

from obliviate.methods import METHODS
from obliviate.methods._common import RETAIN_LOSS_TYPES, check_choice, check_positive, check_reduction, retain_loss
from obliviate.methods._losses import masked_mean
from obliviate.methods.base import UnlearningMethod


@dataclass
class KLConfig:
    """Arguments of KL.

    Attributes:
        gamma: Weight of the forget divergence term (maximised).
        alpha: Weight of the retain term.
        max_kl: Optional cap (nats) on each answer token's KL (each sequence's mean KL with
            ``reduction="sequence"``); None = no cap (the divergence is bounded anyway).
        retain_loss_type: "NLL" (retain cross-entropy) or "KL" (divergence from the
            reference on retain).
        reduction: "token" (means over all answer tokens of the batch) or "sequence"
            (per-sequence means, then the batch mean), for both terms.
    """

    gamma: float = 1.0
    alpha: float = 1.0
    max_kl: float | None = None
    retain_loss_type: str = "NLL"
    reduction: str = "token"


@METHODS.register("KL", tracks=("llm",))
class KLDivergence(UnlearningMethod):
    """Maximise KL(p_θ || p_ref) on forget answer tokens, keep the retain NLL low."""

    Config = KLConfig
    needs_reference = True

    def __init__(self, config: KLConfig | None = None) -> None:
        super().__init__(config)
        check_choice("KL", "retain_loss_type", self.cfg.retain_loss_type, RETAIN_LOSS_TYPES)
        check_positive("KL", "alpha", self.cfg.alpha, allow_zero=True)
        check_reduction("KL", self.cfg.reduction)
        if self.cfg.max_kl is not None:
            check_positive("KL", "max_kl", self.cfg.max_kl)

    def loss(self, model, batch, ctx):
        kl, mask = ctx.adapter.token_kl(model, ctx.ref_model, batch["forget"])  # [b, t]
        cap = self.cfg.max_kl
        if self.cfg.reduction == "token":
            kl_f = masked_mean(kl, mask)
            kl_used = kl_f if cap is None else masked_mean(kl.clamp(max=cap), mask)
        else:
            per_seq = kl.sum(-1) / mask.sum(-1).clamp_min(1)  # [b]
            kl_f = per_seq.mean()
            kl_used = kl_f if cap is None else per_seq.clamp(max=cap).mean()
        r_loss = retain_loss(model, batch, ctx, self.cfg.retain_loss_type, self.cfg.reduction)
        loss = -self.cfg.gamma * kl_used + self.cfg.alpha * r_loss
        return loss, {"forget_kl": kl_f.item(), "retain_loss": r_loss.item()}
