"""FT: fine-tune on the retain set only (catastrophic forgetting of the forget set)."""

from __future__ import annotations

from dataclasses import dataclass

from obliviate.methods import METHODS
from obliviate.methods._common import check_reduction, nll_term
from obliviate.methods.base import UnlearningMethod


@dataclass
class FTConfig:
    """Arguments of FT.

    Attributes:
        reduction: "token" (mean NLL over all answer tokens of the batch, HF's loss) or
            "sequence" (per-sequence means, then the batch mean); the same for images.
    """

    reduction: str = "token"


@METHODS.register("FT", tracks=("vision", "llm"))
class FineTune(UnlearningMethod):
    """Loss: mean NLL (CE) on the retain batch. The epoch is anchored on the retain set."""

    Config = FTConfig
    needs_forget = False
    anchor = "retain"

    def __init__(self, config: FTConfig | None = None) -> None:
        super().__init__(config)
        check_reduction("FT", self.cfg.reduction)

    def loss(self, model, batch, ctx):
        loss = nll_term(model, batch["retain"], ctx, self.cfg.reduction)
        return loss, {"retain_loss": loss.item()}
