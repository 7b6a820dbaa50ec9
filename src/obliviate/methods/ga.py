"""GA / GradAscent: gradient ascent on the forget set, ``−NLL_f``."""

from __future__ import annotations

from obliviate.methods import METHODS
from obliviate.methods.base import UnlearningMethod


@METHODS.register("GA", aliases=("GradAscent",), tracks=("vision", "llm"))
class GradAscent(UnlearningMethod):
    """Loss: minus the mean forget NLL (CE). Uses no retain data."""

    needs_retain = False

    def loss(self, model, batch, ctx):
        nll, _ = ctx.adapter.per_sample_nll(model, batch["forget"])
        forget_loss = nll.mean()
        return -forget_loss, {"forget_loss": forget_loss.item()}
