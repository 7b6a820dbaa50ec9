"""IdK / PO: teach refusals on the forget questions, plus the data contract of IDK methods.

Loss::

    (Σ_t NLL_t(y_idk | x_f) + γ · Σ_t NLL_t(y_r | x_r)) / (n_idk + n_r)

the answer-token NLL of an "I don't know"-style answer to each forget question and of the
retain answers (the TOFU paper's "preference optimisation" baseline). With γ = 1 this is the
TOFU code's ``idk`` loss exactly: ``outputs.loss`` of one forward over the refusal and retain
sequences concatenated, a token mean over all their answer tokens (the reference framework has
no IdK method). ``reduction="sequence"`` uses ``mean_b NLL(y_idk) + γ · mean_b NLL_r`` with
per-sequence means instead.

Data contract (every method with ``needs_idk = True``: IdK, IdkDPO)
-------------------------------------------------------------------
Each training batch must carry, besides ``batch["forget"] = {input_ids, attention_mask,
labels}`` (the forget question + its original answer), a sub-batch::

    batch["forget"]["idk"] = {"input_ids", "attention_mask", "labels"}   # [b, s'] each

with the same ``b`` rows in the same order: row ``i`` is the *same question* as forget row
``i`` followed by a refusal answer (TOFU: one line drawn from an ``idontknow`` list), built by
the same tokenisation/chat template as the forget sample, ``labels = -100`` on the prompt and
padding. The simplest way for a dataset is to give each forget item an ``"idk"`` entry (an item
of the same form) and to collate it with the same collator, recursively (as
:func:`obliviate.methods._common.pad_collate` does). A data pipeline checks
:func:`needs_idk` (``needs_idk("IdkDPO") -> True``) to decide whether to attach IDK answers; a
batch without them raises :class:`~obliviate.errors.DataError`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from obliviate.methods import METHODS
from obliviate.methods._common import IDK_KEY, check_positive, check_reduction, idk_batch, retain_loss
from obliviate.methods.base import UnlearningMethod

__all__ = ["IDK_KEY", "IdK", "needs_idk"]


def needs_idk(method: Any) -> bool:
    """True iff ``method`` (a registered name, a class or an instance) needs IDK answers.

    Example:
        >>> needs_idk("IdkDPO"), needs_idk("GradDiff")
        (True, False)
    """
    if isinstance(method, str):
        method = METHODS.get(method)
    return bool(getattr(method, "needs_idk", False))


@dataclass
class IdKConfig:
    """Arguments of IdK.

    Attributes:
        gamma: Weight of the retain NLL.
        reduction: "token" (one mean over the answer tokens of the refusal and retain
            batches together, the TOFU code's) or "sequence" (per-sequence means of each).
    """

    gamma: float = 1.0
    reduction: str = "token"


@METHODS.register("IdK", aliases=("PO", "IdkNLL"), tracks=("llm",))
class IdK(UnlearningMethod):
    """Fine-tune towards refusal answers on forget questions; keep the retain NLL low."""

    Config = IdKConfig
    needs_idk = True

    def __init__(self, config: IdKConfig | None = None) -> None:
        super().__init__(config)
        check_positive("IdK", "gamma", self.cfg.gamma, allow_zero=True)
        check_reduction("IdK", self.cfg.reduction)

    def loss(self, model, batch, ctx):
        if self.cfg.reduction == "sequence":
            idk_nll = ctx.adapter.per_sample_nll(model, idk_batch(batch, "IdK"))[0].mean()
            r_loss = retain_loss(model, batch, ctx, "NLL", "sequence")
            loss = idk_nll + self.cfg.gamma * r_loss
            return loss, {"idk_loss": idk_nll.item(), "retain_loss": r_loss.item()}
        logp_i, mask_i, _ = ctx.adapter.token_logprobs(model, idk_batch(batch, "IdK"))  # [b, t]
        logp_r, mask_r, _ = ctx.adapter.token_logprobs(model, batch["retain"])  # [b', t']
        n_i, n_r = mask_i.sum().clamp_min(1), mask_r.sum().clamp_min(1)
        loss = (-logp_i.sum() - self.cfg.gamma * logp_r.sum()) / (mask_i.sum() + mask_r.sum()).clamp_min(1)
        return loss, {"idk_loss": (-logp_i.sum() / n_i).item(), "retain_loss": (-logp_r.sum() / n_r).item()}
