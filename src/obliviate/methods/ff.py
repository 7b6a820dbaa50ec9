"""FF (Fisher forgetting), one-shot, plus the per-sample gradient helpers of the one-shot methods.

Fisher forgetting (Golatkar et al. 2020, as implemented in the sparsity-unlearning code)
adds Gaussian noise whose variance is inversely proportional to the diagonal Fisher
information of the *retain* set::

    F_j   = mean_{(x, y) in retain} (∂ log p_θ(y|x) / ∂θ_j)²        (empirical Fisher, per sample)
    σ_j   = min( sqrt(α / (F_j + ε)), max_std )
    θ_j  ← θ_j + σ_j · z_j,   z_j ~ N(0, 1)

Parameters the retain set does not need (small F_j) receive large noise and lose what they
encoded about the forget set; parameters the retain set relies on barely move. The clamp
``max_std`` bounds the noise of parameters with (near-)zero Fisher, which would otherwise
receive unbounded noise (the reference code clamps at 1e-3). Noise reaches ``max_std``
exactly when ``F_j ≤ α / max_std² − ε``.

The helpers below (per-sample gradients with ``torch.func``, diagonal Fisher, mean
gradients) are shared with :mod:`obliviate.methods.iu` and :mod:`obliviate.methods.ssd`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from obliviate.data import stack_collate
from obliviate.errors import ConfigError
from obliviate.registry import METHODS
from obliviate.methods.base import UnlearningMethod

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- helpers
def trainable_params(model: nn.Module) -> dict[str, nn.Parameter]:
    """Named parameters with ``requires_grad`` (the ones every one-shot method edits)."""
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def model_device(model: nn.Module) -> torch.device:
    """Device of the model's first parameter (CPU for a parameterless model)."""
    return next(iter(model.parameters()), torch.empty(0)).device


def iter_batches(
    dataset: Dataset, batch_size: int, *, num_samples: int | None = None, seed: int = 0,
    device: torch.device | None = None, collate_fn: Callable[[list], dict] = stack_collate,
) -> Iterator[dict[str, Any]]:
    """Batches of ``dataset`` in order (a seeded random subset of ``num_samples`` if given)."""
    n = len(dataset)  # type: ignore[arg-type]
    if num_samples is not None and num_samples < n:
        rows = np.sort(np.random.default_rng(seed).permutation(n)[:num_samples])
        dataset = Subset(dataset, rows.tolist())
    for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate_fn):
        if device is not None:
            batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        yield batch


class _Functional:
    """Callable standing in for ``model`` with substituted parameters (for ``torch.func``)."""

    def __init__(self, model: nn.Module, params: dict[str, torch.Tensor]) -> None:
        self.model, self.params = model, params

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return torch.func.functional_call(self.model, self.params, args, kwargs)


def per_sample_grads(model: nn.Module, adapter: Any, batch: dict[str, Any], params: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Gradient of each sample's loss (``adapter.per_sample_nll``) w.r.t. ``params``.

    Uses ``torch.func.vmap(grad(...))``; models that ``vmap`` cannot trace fall back to one
    backward pass per sample. The model should be in eval mode (batch-norm statistics are
    then per-model, not per-batch, so a sample's gradient does not depend on its batch).

    Returns:
        ``{name: [b, *param.shape]}``.
    """
    params = params if params is not None else {n: p.detach() for n, p in trainable_params(model).items()}
    tensors = {k: v for k, v in batch.items() if isinstance(v, torch.Tensor)}

    def one(p: dict[str, torch.Tensor], item: dict[str, torch.Tensor]) -> torch.Tensor:
        sub = {k: v.unsqueeze(0) for k, v in item.items()}
        return adapter.per_sample_nll(_Functional(model, p), sub)[0].sum()

    try:
        return torch.func.vmap(torch.func.grad(one), in_dims=(None, 0), randomness="same")(params, tensors)
    except (RuntimeError, NotImplementedError, ValueError) as exc:  # ops vmap cannot batch
        log.debug("vmap per-sample gradients failed (%s); looping over samples", exc)
    names = list(params)
    live = [dict(model.named_parameters())[n] for n in names]
    rows: list[tuple[torch.Tensor, ...]] = []
    b = len(next(iter(tensors.values())))
    for i in range(b):
        sub = {k: (v[i : i + 1] if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
        rows.append(torch.autograd.grad(adapter.per_sample_nll(model, sub)[0].sum(), live))
    return {n: torch.stack([r[j] for r in rows]) for j, n in enumerate(names)}


def _grads(loss: torch.Tensor, params: dict[str, nn.Parameter]) -> dict[str, torch.Tensor]:
    """``∂loss/∂p`` for each parameter (zeros for parameters the loss does not use)."""
    grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
    return {n: torch.zeros_like(p) if g is None else g for (n, p), g in zip(params.items(), grads)}


class eval_mode:
    """Context manager: ``model.eval()`` inside, the previous train/eval mode restored after."""

    def __init__(self, model: nn.Module) -> None:
        self.model, self.was_training = model, model.training

    def __enter__(self) -> nn.Module:
        self.model.eval()
        return self.model

    def __exit__(self, *exc: Any) -> None:
        self.model.train(self.was_training)


def diag_fisher(model: nn.Module, adapter: Any, dataset: Dataset, *, batch_size: int = 64, num_samples: int | None = None,
                seed: int = 0, mode: str = "per_sample") -> dict[str, torch.Tensor]:
    """Diagonal empirical Fisher ``mean_i (∂ℓ_i/∂θ)²`` over ``dataset`` (ℓ = −log p(y|x)).

    Args:
        mode: ``"per_sample"`` (the definition: squared per-sample gradients) or ``"batch"``
            (squared gradient of each batch's mean loss, averaged over batches, as in the SSD
            reference code; cheaper, and depends on ``batch_size``).
    """
    if mode not in ("per_sample", "batch"):
        raise ConfigError(f"Fisher mode must be 'per_sample' or 'batch', got '{mode}'")
    params = trainable_params(model)
    out = {n: torch.zeros_like(p) for n, p in params.items()}
    count = 0
    with eval_mode(model):
        for batch in iter_batches(dataset, batch_size, num_samples=num_samples, seed=seed, device=model_device(model)):
            if mode == "per_sample":
                grads = per_sample_grads(model, adapter, batch)
                for n, g in grads.items():
                    out[n] += g.pow(2).sum(0)
                count += len(next(iter(grads.values())))
            else:
                loss = adapter.per_sample_nll(model, batch)[0].mean()
                for n, g in _grads(loss, params).items():
                    out[n] += g.pow(2)
                count += 1
    if count == 0:
        raise ConfigError("cannot compute a Fisher over an empty dataset")
    return {n: v / count for n, v in out.items()}


def mean_grad(model: nn.Module, adapter: Any, dataset: Dataset, *, batch_size: int = 128) -> dict[str, torch.Tensor]:
    """Gradient of the mean per-sample loss over the whole ``dataset`` (eval mode)."""
    params = trainable_params(model)
    out = {n: torch.zeros_like(p) for n, p in params.items()}
    n_total = len(dataset)  # type: ignore[arg-type]
    with eval_mode(model):
        for batch in iter_batches(dataset, batch_size, device=model_device(model)):
            loss = adapter.per_sample_nll(model, batch)[0].sum() / n_total
            for n, g in _grads(loss, params).items():
                out[n] += g
    return out


def change_stats(before: dict[str, torch.Tensor], model: nn.Module) -> dict[str, float]:
    """How far the parameters moved: ``{"l2", "relative", "max_abs", "changed_fraction"}``."""
    diff_sq, norm_sq, max_abs, changed, total = 0.0, 0.0, 0.0, 0, 0
    for n, p in trainable_params(model).items():
        d = (p.detach() - before[n]).double()
        diff_sq += float(d.pow(2).sum())
        norm_sq += float(before[n].double().pow(2).sum())
        max_abs = max(max_abs, float(d.abs().max())) if d.numel() else max_abs
        changed += int((d != 0).sum())
        total += d.numel()
    return {"l2": math.sqrt(diff_sq), "relative": math.sqrt(diff_sq / max(norm_sq, 1e-30)), "max_abs": max_abs,
            "changed_fraction": changed / max(total, 1)}


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    """Detached copies of the trainable parameters."""
    return {n: p.detach().clone() for n, p in trainable_params(model).items()}


# ----------------------------------------------------------------------------- FF
@dataclass
class FFConfig:
    """Arguments of FF (Fisher forgetting).

    Attributes:
        alpha: Noise scale α: the noise variance of parameter j is ``α / (F_j + eps)``.
        max_std: Clamp on the noise standard deviation (parameters with tiny Fisher would
            otherwise get unbounded noise). The reference code clamps at 1e-3, where nearly
            every parameter of a converged model hits the clamp and the noise is uniform.
        eps: Added to the Fisher before dividing.
        num_samples: Retain samples used for the Fisher (a seeded random subset; ``None`` =
            the whole retain set).
        batch_size: Batch size of the per-sample gradient passes.
        forget_class_reset: Full-class forgetting: for every class that has forget samples
            and *no* retain sample left (the whole class is forgotten), also resample its
            classifier row around 0 (weights ``N(0, 0.01²)``, bias 0), as the reference
            ``fisher_new`` does for full-class forgetting only (``mu[c] = 0, var[c] = 1e-4`` on
            the output layer); without it, noise alone rarely removes a whole class. A class
            that still has retain samples (random or sub-class forgetting) is never reset.
    """

    alpha: float = 1e-8
    max_std: float = 0.01
    eps: float = 1e-8
    num_samples: int | None = None
    batch_size: int = 64
    forget_class_reset: bool = True


def _labels(ds: Dataset) -> list[int]:
    labels = getattr(ds, "labels", None)
    if labels is None:
        try:
            labels = [int(ds[i]["labels"]) for i in range(len(ds))]  # type: ignore[arg-type,index]
        except (KeyError, TypeError, IndexError):
            return []
    return [int(v) for v in (labels.tolist() if hasattr(labels, "tolist") else labels)]


def fully_forgotten_classes(forget_ds: Dataset, retain_ds: Dataset | None) -> list[int]:
    """Classes of the forget set with no sample left in the retain set (full-class forgetting)."""
    left = set(_labels(retain_ds)) if retain_ds is not None else set()
    return sorted(set(_labels(forget_ds)) - left)


def classifier_head(model: nn.Module, num_classes: int) -> nn.Linear | None:
    """The last ``nn.Linear`` with ``num_classes`` outputs (timm ``get_classifier()`` first)."""
    getter = getattr(model, "get_classifier", None)
    head = getter() if callable(getter) else None
    if isinstance(head, nn.Linear) and head.out_features == num_classes:
        return head
    linears = [m for m in model.modules() if isinstance(m, nn.Linear) and m.out_features == num_classes]
    return linears[-1] if linears else None


def fisher_noise_std(fisher: torch.Tensor, alpha: float, max_std: float, eps: float) -> torch.Tensor:
    """``min(sqrt(α / (F + ε)), max_std)`` elementwise."""
    return torch.sqrt(alpha / (fisher + eps)).clamp(max=max_std)


@METHODS.register("FF", tracks=("vision",))
class FisherForgetting(UnlearningMethod):
    """One-shot: Gaussian noise scaled by the inverse diagonal retain Fisher (see module doc)."""

    Config = FFConfig
    one_shot = True

    def __init__(self, config: FFConfig | None = None) -> None:
        super().__init__(config)
        c = self.cfg
        if c.alpha <= 0 or c.max_std <= 0 or c.eps < 0:
            raise ConfigError(f"FF needs alpha > 0, max_std > 0, eps >= 0; got {c.alpha}, {c.max_std}, {c.eps}")
        if c.batch_size < 1 or (c.num_samples is not None and c.num_samples < 1):
            raise ConfigError("FF batch_size and num_samples must be >= 1")
        self.stats: dict[str, float] = {}

    @torch.no_grad()
    def _add_noise(self, model: nn.Module, fisher: dict[str, torch.Tensor], seed: int) -> tuple[int, int]:
        gen = torch.Generator(device="cpu").manual_seed(int(seed))
        clamped = total = 0
        for n, p in trainable_params(model).items():
            std = fisher_noise_std(fisher[n], self.cfg.alpha, self.cfg.max_std, self.cfg.eps)
            z = torch.randn(p.shape, generator=gen, dtype=p.dtype).to(p.device)
            p.add_(std * z)
            clamped += int((std >= self.cfg.max_std).sum())
            total += p.numel()
        return clamped, total

    @torch.no_grad()
    def _reset_forgotten_classes(self, model: nn.Module, forget_ds: Dataset, retain_ds: Dataset, adapter: Any, seed: int) -> list[int]:
        """The reference's output-layer treatment for full-class forgetting; returns the reset classes."""
        classes = fully_forgotten_classes(forget_ds, retain_ds)
        num_classes = getattr(adapter, "num_classes", None)
        head = classifier_head(model, int(num_classes)) if classes and num_classes else None
        if head is None:
            return []
        gen = torch.Generator(device="cpu").manual_seed(int(seed) + 1)
        for c in classes:
            head.weight[c] = (0.01 * torch.randn(head.weight.shape[1:], generator=gen)).to(head.weight)
            if head.bias is not None:
                head.bias[c] = 0.0
        log.info("FF: class(es) %s have no retain sample left: classifier rows resampled around 0 (forget_class_reset)", classes)
        return classes

    def apply(self, model: nn.Module, forget_ds: Dataset, retain_ds: Dataset, adapter: Any, seed: int) -> nn.Module:
        """Add Fisher-scaled noise to ``model`` in place and return it."""
        if retain_ds is None or len(retain_ds) == 0:  # type: ignore[arg-type]
            raise ConfigError("FF needs a non-empty retain set (its Fisher scales the noise)")
        fisher = diag_fisher(model, adapter, retain_ds, batch_size=self.cfg.batch_size, num_samples=self.cfg.num_samples, seed=seed)
        before = snapshot(model)
        clamped, total = self._add_noise(model, fisher, seed)
        reset = self._reset_forgotten_classes(model, forget_ds, retain_ds, adapter, seed) if self.cfg.forget_class_reset else []
        self.stats = {**change_stats(before, model), "clamped_fraction": clamped / max(total, 1), "forget_class_reset": reset}
        log.info("FF: added noise to %d parameters (%.1f%% at the max_std clamp); relative change %.3g, max |Δθ| %.3g",
                 total, 100 * self.stats["clamped_fraction"], self.stats["relative"], self.stats["max_abs"])
        if self.stats["clamped_fraction"] > 0.99:
            self.warn(f"FF: {100 * self.stats['clamped_fraction']:.1f}% of the parameters hit the max_std clamp, so the noise is "
                      "(nearly) uniform rather than shaped by the Fisher; lower alpha or raise max_std")
        return model
