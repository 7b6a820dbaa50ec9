"""FT: fine-tune on the retain set only (catastrophic forgetting of the forget set)."""

from __future__ import annotations

from obliviate.methods import METHODS
from obliviate.methods.base import UnlearningMethod


@METHODS.register("FT", tracks=("vision", "llm"))
class FineTune(UnlearningMethod):
    """Loss: mean NLL (CE) on the retain batch. The epoch is anchored on the retain set."""

    needs_forget = False
    anchor = "retain"

    def loss(self, model, batch, ctx):
        nll, _ = ctx.adapter.per_sample_nll(model, batch["retain"])
        loss = nll.mean()
        return loss, {"retain_loss": loss.item()}
