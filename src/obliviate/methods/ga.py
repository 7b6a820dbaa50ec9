"""GA / GradAscent: gradient ascent on the forget set, ``−NLL_f``.

``NLL_f`` is the token mean over every answer token of the forget batch (HF's
``outputs.loss``, as the reference framework's ``GradAscent``) by default;
``reduction="sequence"`` averages per sequence first. For image classifiers both are the mean
cross-entropy of the batch.
"""

from __future__ import annotations

from dataclasses import dataclass

from obliviate.methods import METHODS
from obliviate.methods._common import check_reduction, nll_term
from obliviate.methods.base import UnlearningMethod


@dataclass
class GradAscentConfig:
    """Arguments of GradAscent.

    Attributes:
        reduction: "token" (mean over all answer tokens of the batch, as the reference
            framework) or "sequence" (per-sequence means, then the batch mean).
    """

    reduction: str = "token"


@METHODS.register("GA", aliases=("GradAscent",), tracks=("vision", "llm"))
class GradAscent(UnlearningMethod):
    """Loss: minus the mean forget NLL (CE). Uses no retain data."""

    Config = GradAscentConfig
    needs_retain = False

    def __init__(self, config: GradAscentConfig | None = None) -> None:
        super().__init__(config)
        check_reduction("GradAscent", self.cfg.reduction)

    def loss(self, model, batch, ctx):
        forget_loss = nll_term(model, batch["forget"], ctx, self.cfg.reduction)
        return -forget_loss, {"forget_loss": forget_loss.item()}
