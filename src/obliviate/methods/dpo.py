"""IdkDPO (alias DPO): direct preference optimisation with win = IDK answer, lose = forget answer.

Loss::

    γ · (−(2/β) · mean_b logσ(β[(log π_θ(w) − log π_ref(w)) − (log π_θ(l) − log π_ref(l))])) + α · L_r

``w`` = the refusal answer ``batch["forget"]["idk"]`` (see :mod:`obliviate.methods.idk` for the
data contract), ``l`` = the original forget answer, ``log π`` = summed answer-token log-prob per
sequence. Both reference log-probs are cached once per sample exactly as in NPO
(:class:`~obliviate.methods._refcache.CachedReference`, precomputed in :meth:`IdkDPO.setup`);
the reference model is released afterwards unless the retain term is ``"KL"``.
"""

from __future__ import annotations

from dataclasses import dataclass

from obliviate.methods import METHODS
from obliviate.methods._common import RETAIN_LOSS_TYPES, check_choice, check_positive, check_reduction, idk_batch, retain_loss
from obliviate.methods._losses import dpo_loss
from obliviate.methods._refcache import CachedReference
from obliviate.methods.base import UnlearningMethod


@dataclass
class IdkDPOConfig:
    """Arguments of IdkDPO.

    Attributes:
        beta: Inverse temperature β.
        gamma: Weight of the DPO forget term.
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


@METHODS.register("IdkDPO", aliases=("DPO",), tracks=("llm",))
class IdkDPO(UnlearningMethod):
    """DPO preferring the IDK answer over the forget answer, with cached reference log-probs."""

    Config = IdkDPOConfig
    needs_reference = True
    needs_idk = True

    def __init__(self, config: IdkDPOConfig | None = None) -> None:
        super().__init__(config)
        check_positive("IdkDPO", "beta", self.cfg.beta)
        check_choice("IdkDPO", "retain_loss_type", self.cfg.retain_loss_type, RETAIN_LOSS_TYPES)
        check_reduction("IdkDPO", self.cfg.reduction)
        self.ref_cache = CachedReference(
            self.cfg.ref_cache, keep_reference=self.cfg.retain_loss_type == "KL",
            sides=lambda forget: [idk_batch({"forget": forget}, "IdkDPO"), forget], method="IdkDPO",
        )

    def setup(self, model, ctx):
        self.ref_cache.setup(ctx)

    def loss(self, model, batch, ctx):
        forget = batch["forget"]
        win = idk_batch(batch, "IdkDPO")
        logp_w_ref, logp_l_ref = self.ref_cache.logprobs(forget, ctx)  # [b] each
        logp_w = ctx.adapter.per_sample_logprob(model, win)  # [b]
        logp_l = ctx.adapter.per_sample_logprob(model, forget)  # [b]
        f_loss = dpo_loss(logp_w, logp_w_ref, logp_l, logp_l_ref, self.cfg.beta)
        r_loss = retain_loss(model, batch, ctx, self.cfg.retain_loss_type, self.cfg.reduction)
        loss = self.cfg.gamma * f_loss + self.cfg.alpha * r_loss
        return loss, {"forget_loss": f_loss.item(), "retain_loss": r_loss.item()}
