"""NPO (negative preference optimisation) with reference log-probs computed once.

Loss::

    γ · (2/β) · mean_b softplus(β · (log π_θ(y_b|x_b) − log π_ref(y_b|x_b))) + α · L_r

``log π(y|x)`` is the *summed* answer-token log-prob of each forget sequence (never a
batch-mean loss), as in the reference framework's ``compute_dpo_loss``. ``log π_ref`` comes
from :class:`~obliviate.methods._refcache.CachedReference`:
with the default ``ref_cache="precompute"`` the reference runs once over the forget set in
:meth:`NPO.setup` (the trainer provides the forget dataset and collator in ``ctx.extras``)
and is then released (``ctx.ref_model = None``) unless the retain term is ``"KL"``; no
reference forward happens during training. ``ref_cache="lazy"`` fills the cache per batch on
first sight instead and releases the reference once every forget sample was seen.
"""

from __future__ import annotations

from dataclasses import dataclass

from obliviate.methods import METHODS
from obliviate.methods._common import RETAIN_LOSS_TYPES, check_choice, check_positive, check_reduction, retain_loss
from obliviate.methods._losses import npo_loss
from obliviate.methods._refcache import CachedReference
from obliviate.methods.base import UnlearningMethod


@dataclass
class NPOConfig:
    """Arguments of NPO.

    Attributes:
        beta: Inverse temperature β of the preference loss.
        gamma: Weight of the NPO forget term.
        alpha: Weight of the retain term.
        retain_loss_type: "NLL" or "KL" (KL keeps the reference model in memory).
        ref_cache: "precompute" (one reference pass over the forget set before training) or
            "lazy" (cache filled per batch on first sight).
        reduction: "token" (retain NLL over all answer tokens of the batch, as the reference
            framework; KL retain term KL(p_ref || p_θ) over non-padding positions) or
            "sequence" (per-sequence means; KL(p_θ || p_ref) on answer tokens).
    """

    beta: float = 0.1
    gamma: float = 1.0
    alpha: float = 1.0
    retain_loss_type: str = "NLL"
    ref_cache: str = "precompute"
    reduction: str = "token"


@METHODS.register("NPO", tracks=("llm",))
class NPO(UnlearningMethod):
    """NPO on per-sequence summed answer log-probs, against cached reference log-probs."""

    Config = NPOConfig
    needs_reference = True

    def __init__(self, config: NPOConfig | None = None) -> None:
        super().__init__(config)
        check_positive("NPO", "beta", self.cfg.beta)
        check_choice("NPO", "retain_loss_type", self.cfg.retain_loss_type, RETAIN_LOSS_TYPES)
        check_reduction("NPO", self.cfg.reduction)
        self.ref_cache = CachedReference(
            self.cfg.ref_cache, keep_reference=self.cfg.retain_loss_type == "KL", sides=lambda forget: [forget], method="NPO"
        )

    def setup(self, model, ctx):
        self.ref_cache.setup(ctx)

    def loss(self, model, batch, ctx):
        forget = batch["forget"]
        (logp_ref,) = self.ref_cache.logprobs(forget, ctx)  # [b], no gradient
        logp = ctx.adapter.per_sample_logprob(model, forget)  # [b]
        f_loss = npo_loss(logp, logp_ref, self.cfg.beta)
        r_loss = retain_loss(model, batch, ctx, self.cfg.retain_loss_type, self.cfg.reduction)
        loss = self.cfg.gamma * f_loss + self.cfg.alpha * r_loss
        return loss, {"forget_loss": f_loss.item(), "forget_logratio": (logp - logp_ref).mean().item(), "retain_loss": r_loss.item()}
