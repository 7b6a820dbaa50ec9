"""IdK / PO: teach refusals on the forget questions, plus the data contract of IDK methods.

Loss::

    NLL(y_idk | x_f) + γ · NLL_r

the mean answer-token NLL of an "I don't know"-style answer to each forget question, plus the
retain NLL (the TOFU paper's "preference optimisation" baseline; the TOFU code's ``idk`` loss).
Both NLLs are token means over the batch's answer tokens (HF's ``outputs.loss``, as the TOFU
code) unless ``reduction="sequence"``.

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
from obliviate.methods._common import IDK_KEY, check_positive, check_reduction, idk_batch, nll_term, retain_loss
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
        reduction: "token" (NLLs over all answer tokens of the batch) or "sequence"
            (per-sequence means, then the batch mean).
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
        idk_nll = nll_term(model, idk_batch(batch, "IdK"), ctx, self.cfg.reduction)
        r_loss = retain_loss(model, batch, ctx, "NLL", self.cfg.reduction)
        loss = idk_nll + self.cfg.gamma * r_loss
        return loss, {"idk_loss": idk_nll.item(), "retain_loss": r_loss.item()}
