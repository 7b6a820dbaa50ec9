"""SalUn (saliency unlearning, Fan et al. 2024): random labelling restricted to salient weights.

1. Saliency (in ``setup``, model in eval mode): ``s = |∇_θ CE(forget set)|``, the gradient
   of the mean forget loss accumulated over the whole forget set. The mask keeps the top
   ``threshold_ratio`` fraction of all trainable entries by ``s`` (one global ranking, as
   in the reference ``generate_mask.py``; exactly ``floor(ratio · #entries)`` entries).
   On a pruned model (pruning masks attached) only the live weights are ranked and
   counted. The reference ranks every entry: after OMP 90% its "top 50%" holds nearly all
   live weights (pruned ones have zero gradient and rank last), which makes SalUn plain RL.
2. Training: RL (:mod:`obliviate.methods.rl`) -- per epoch a full pass over the forget set
   with random *wrong* labels, then a full pass over the retain set with the true labels,
   as the reference ``unlearn/RL.py`` (CIFAR-10 branch). Only salient entries may change:

   - a gradient hook multiplies each parameter's gradient by its mask, so gradient
     clipping and the optimizer only ever see masked gradients (and Adam's moments of
     frozen entries stay exactly 0);
   - ``before_step`` zeroes the frozen entries' gradients again (belt and braces);
   - ``after_step`` writes the saved values back into the frozen entries, which undoes any
     drift from decoupled weight decay (AdamW), L2 weight decay or momentum: frozen
     weights stay bit-for-bit equal to the original.

   The hooks are removed when training ends (a callback exposed through ``callbacks``).
   Buffers (batch-norm running statistics) are not parameters and are not masked.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import TrainerCallback

from obliviate.errors import ConfigError
from obliviate.registry import METHODS
from obliviate.methods.base import UnlearningMethod
from obliviate.methods.ff import eval_mode, mean_grad
from obliviate.methods.rl import PAIRINGS, random_label_loss

log = logging.getLogger(__name__)


@dataclass
class SalUnConfig:
    """Arguments of SalUn.

    Attributes:
        threshold_ratio: Fraction of trainable entries that are salient (updated), in (0, 1].
        alpha: Weight of the retain cross-entropy of the RL loss.
        pairing: "passes" (the reference: a forget pass, then a retain pass, per epoch) or
            "joint" (see :mod:`obliviate.methods.rl`).
        batch_size: Batch size of the saliency gradient pass.
    """

    threshold_ratio: float = 0.5
    alpha: float = 1.0
    pairing: str = "passes"
    batch_size: int = 128


def saliency_mask(grads: dict[str, torch.Tensor], ratio: float, live: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Boolean masks of the global top-``ratio`` fraction of ``|grad|`` entries.

    Args:
        grads: Forget-loss gradients per parameter.
        ratio: Fraction of the *live* entries to mark salient.
        live: Optional boolean masks of the entries that exist (a pruned model's kept
            weights); pruned entries are never salient and do not count in the fraction.

    Exactly ``floor(ratio · #live entries)`` entries are selected (ties broken by a stable sort).
    """
    flat = torch.cat([g.detach().abs().reshape(-1) for g in grads.values()])
    alive = torch.cat([(live[n] if live is not None and n in live else torch.ones_like(g, dtype=torch.bool)).reshape(-1).to(flat.device)
                       for n, g in grads.items()])
    candidates = alive.nonzero().squeeze(1)
    k = int(ratio * candidates.numel())
    keep = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
    if k > 0:
        order = torch.sort(flat[candidates], descending=True, stable=True).indices[:k]
        keep[candidates[order]] = True
    out, start = {}, 0
    for n, g in grads.items():
        out[n] = keep[start : start + g.numel()].view_as(g)
        start += g.numel()
    return out


class _RemoveHooks(TrainerCallback):
    def __init__(self, method: "SalUn") -> None:
        self.method = method

    def on_train_end(self, args, state, control, **kwargs):
        self.method.remove_hooks()


@METHODS.register("SalUn", tracks=("vision",))
class SalUn(UnlearningMethod):
    """RL restricted to the saliency mask; non-salient weights stay bit-for-bit fixed."""

    Config = SalUnConfig

    def __init__(self, config: SalUnConfig | None = None) -> None:
        super().__init__(config)
        if not 0 < self.cfg.threshold_ratio <= 1:
            raise ConfigError(f"SalUn threshold_ratio must be in (0, 1], got {self.cfg.threshold_ratio}")
        if self.cfg.pairing not in PAIRINGS:
            raise ConfigError(f"SalUn pairing must be one of {', '.join(PAIRINGS)}, got '{self.cfg.pairing}'")
        self.anchor = "passes" if self.cfg.pairing == "passes" else "forget"
        self.masks: dict[str, torch.Tensor] = {}
        self._frozen: dict[str, torch.Tensor] = {}
        self._hooks: list[Any] = []

    # ------------------------------------------------------------------ mask
    def compute_mask(self, model: nn.Module, forget_ds: Any, adapter: Any) -> dict[str, torch.Tensor]:
        """Saliency masks from the forget-loss gradient over ``forget_ds``; on a pruned model
        (masks attached) the ranking covers the live weights only."""
        from obliviate.pruning.masks import attached_masks

        grads = mean_grad(model, adapter, forget_ds, batch_size=self.cfg.batch_size)
        pruned = attached_masks(model)
        live = {n: pruned[n].to(torch.bool) for n in grads if n in pruned}
        return saliency_mask(grads, self.cfg.threshold_ratio, live or None)

    def set_mask(self, model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
        """Install ``masks`` on ``model``: save frozen values, hook gradients."""
        self.remove_hooks()
        params = dict(model.named_parameters())
        self.masks = {n: m.to(params[n].device) for n, m in masks.items()}
        self._frozen = {n: params[n].detach().clone() for n in self.masks}
        for n, m in self.masks.items():
            self._hooks.append(params[n].register_hook(lambda g, m=m: g * m.to(g.dtype)))
        salient = sum(int(m.sum()) for m in self.masks.values())
        total = sum(m.numel() for m in self.masks.values())
        log.info("SalUn: %d of %d weights salient (%.1f%%); the rest stay fixed", salient, total, 100 * salient / max(total, 1))

    def remove_hooks(self) -> None:
        """Remove the gradient hooks from the model (called when training ends)."""
        for h in self._hooks:
            h.remove()
        self._hooks = []

    def setup(self, model, ctx):
        forget = ctx.extras.get("forget_dataset")
        if forget is None:
            raise ConfigError("SalUn needs the forget dataset in ctx.extras['forget_dataset'] to build its saliency mask")
        with eval_mode(model):
            masks = self.compute_mask(model, forget, ctx.adapter)
        self.set_mask(model, masks)

    def callbacks(self, ctx) -> list[TrainerCallback]:
        """Removes the gradient hooks when training ends."""
        return [_RemoveHooks(self)]

    # ------------------------------------------------------------------ training
    def loss(self, model, batch, ctx):
        return random_label_loss(model, batch, ctx, self.cfg.alpha)

    @torch.no_grad()
    def before_step(self, model, ctx):
        for n, p in model.named_parameters():
            m = self.masks.get(n)
            if m is not None and p.grad is not None:
                p.grad.mul_(m.to(p.grad.dtype))

    @torch.no_grad()
    def after_step(self, model, ctx):
        for n, p in model.named_parameters():
            m = self.masks.get(n)
            if m is not None:
                p.copy_(torch.where(m, p, self._frozen[n]))

