"""KL (seed 003): push the forget-set predictions away from the frozen reference.

Loss::

    −γ · mean_b min(KL_f(b), max_kl) + α · L_r

``KL_f(b)`` is the mean over the answer tokens of forget sequence ``b`` of
``KL(p_θ(·|x_<t) || p_ref(·|x_<t))`` (prompt and padding positions excluded). Minimising the
loss *maximises* this divergence. ``L_r`` is the retain NLL (or KL to the reference on retain
answer tokens with ``retain_loss_type="KL"``).

Boundedness: with the reference fixed, ``KL(p_θ || p_ref) ≤ max_v −log p_ref(v)`` per token,
so this direction of the divergence is bounded (unlike ``KL(p_ref || p_θ)`` or the forget
NLL, which grow without limit); the maximum puts all mass on the reference's least likely
token. ``max_kl`` optionally caps each sequence's divergence earlier: past the cap that
sequence stops contributing gradient. Differences from the seed's snippet: it used the cross
entropy ``−Σ p_θ log p_ref`` (= KL + entropy of p_θ) averaged over every position including
prompt and padding; this is the true KL over answer tokens only.
"""

from __future__ import annotations

from dataclasses import dataclass

from obliviate.methods import METHODS
from obliviate.methods._common import RETAIN_LOSS_TYPES, check_choice, check_positive, retain_loss
from obliviate.methods.base import UnlearningMethod


@dataclass
class KLConfig:
    """Arguments of KL.

    Attributes:
        gamma: Weight of the forget divergence term (maximised).
        alpha: Weight of the retain term.
        max_kl: Optional cap (nats per answer token) on each forget sequence's mean KL;
            None = no cap (the divergence is bounded anyway, see the module docs).
        retain_loss_type: "NLL" (retain cross-entropy) or "KL" (divergence from the
            reference on retain answer tokens).
    """

    gamma: float = 1.0
    alpha: float = 1.0
    max_kl: float | None = None
    retain_loss_type: str = "NLL"


@METHODS.register("KL", tracks=("llm",))
class KLDivergence(UnlearningMethod):
    """Maximise KL(p_θ || p_ref) on forget answer tokens, keep the retain NLL low."""

    Config = KLConfig
    needs_reference = True

    def __init__(self, config: KLConfig | None = None) -> None:
        super().__init__(config)
        check_choice("KL", "retain_loss_type", self.cfg.retain_loss_type, RETAIN_LOSS_TYPES)
        check_positive("KL", "alpha", self.cfg.alpha, allow_zero=True)
        if self.cfg.max_kl is not None:
            check_positive("KL", "max_kl", self.cfg.max_kl)

    def loss(self, model, batch, ctx):
        kl_f = ctx.adapter.per_sample_kl(model, ctx.ref_model, batch["forget"])  # [b]
        kl_used = kl_f if self.cfg.max_kl is None else kl_f.clamp(max=self.cfg.max_kl)
        r_loss = retain_loss(model, batch, ctx, self.cfg.retain_loss_type)
        loss = -self.cfg.gamma * kl_used.mean() + self.cfg.alpha * r_loss
        return loss, {"forget_kl": kl_f.mean().item(), "retain_loss": r_loss.item()}
