"""Pruning masks: which weights are prunable, how masks stay enforced, measured sparsity.

A *mask* maps a weight's name (``"features.0.weight"``, relative to the model it was computed
on) to a boolean tensor of the weight's shape: ``True`` = kept, ``False`` = pruned (zero).

**Enforcement.** :func:`attach_masks` registers a forward pre-hook on every masked module.
The hook (1) re-zeroes the pruned entries in place if anything wrote into them (a one-shot
method, a checkpoint load) and (2) makes sure the current ``weight`` parameter carries a
gradient hook that multiplies its gradient by the mask. With zero weights and zero
gradients, SGD (with momentum), Adam and AdamW (decoupled weight decay) all leave the pruned
entries at exactly 0, so they stay zero *between* forward passes as well, under the HF
Trainer, the seed-004 ``Unlearner`` or any hand-written loop. The hooks are plain Python
objects: they survive ``copy.deepcopy`` (the gradient hook is re-registered on the copy's
parameters at its first forward), PEFT wrapping (the pruned layer becomes the LoRA
``base_layer`` and keeps its hook), and they never change ``state_dict`` keys, so a pruned
model saves and loads as an ordinary checkpoint. Masks are saved separately
(:func:`save_masks`, safetensors) and re-attached after loading (:func:`load_masks`).

**Prunable weights** are the ``weight`` tensors of ``nn.Linear`` / ``nn.Conv{1,2,3}d``
modules (never biases or normalisation layers). The classifier head is excluded unless
``include_head=True``; it is ``model.get_classifier()`` for timm models, otherwise the last
Linear/Conv module in registration order (or the module named by ``head_name``).
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from obliviate.errors import ConfigError
from obliviate.io import atomic_write_bytes

PRUNABLE_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
# Sub-modules that PEFT adds; never prunable, never counted.
_PEFT_PARTS = {"lora_A", "lora_B", "lora_embedding_A", "lora_embedding_B", "lora_magnitude_vector", "original_module", "lora_dropout"}

Masks = dict[str, torch.Tensor]


def _is_peft_internal(name: str) -> bool:
    return bool(set(name.split(".")) & _PEFT_PARTS)


def classifier_head_names(model: nn.Module, head_name: str | None = None) -> set[str]:
    """Names of the prunable modules forming the classifier head.

    Args:
        model: The classifier.
        head_name: Explicit module name of the head (overrides the heuristics).

    Returns:
        ``{name}`` of the head's Linear/Conv modules (empty if none is found).
    """
    modules = dict(model.named_modules())
    if head_name is not None:
        if head_name not in modules:
            raise ConfigError(f"head_name '{head_name}' is not a module of the model; e.g. {list(modules)[-3:]}")
        root = head_name
    else:
        root = None
        get_classifier = getattr(model, "get_classifier", None)
        if callable(get_classifier):
            head = get_classifier()
            root = next((n for n, m in modules.items() if m is head and n), None)
        if root is None:
            prunable = [n for n, m in modules.items() if isinstance(m, PRUNABLE_TYPES) and n and not _is_peft_internal(n)]
            return {prunable[-1]} if prunable else set()
    return {n for n, m in modules.items() if isinstance(m, PRUNABLE_TYPES) and (n == root or n.startswith(root + ".")) and not _is_peft_internal(n)}


def prunable_modules(model: nn.Module, *, include_head: bool = False, head_name: str | None = None) -> dict[str, nn.Module]:
    """Linear/Conv modules whose ``weight`` may be pruned, by module name (registration order)."""
    head = set() if include_head else classifier_head_names(model, head_name)
    return {
        n: m for n, m in model.named_modules()
        if n and isinstance(m, PRUNABLE_TYPES) and n not in head and not _is_peft_internal(n)
    }


def prunable_weights(model: nn.Module, *, include_head: bool = False, head_name: str | None = None) -> dict[str, torch.Tensor]:
    """``{"<module>.weight": weight}`` for every prunable module."""
    return {f"{n}.weight": m.weight for n, m in prunable_modules(model, include_head=include_head, head_name=head_name).items()}


# ----------------------------------------------------------------------------- enforcement
class MaskHook:
    """Forward pre-hook keeping one module's pruned weights at exactly zero (see module doc).

    Args:
        mask: Boolean tensor of the weight's shape (``True`` = kept).
    """

    def __init__(self, mask: torch.Tensor) -> None:
        self.mask = mask.detach().bool().cpu()
        self._cache: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}

    def factor(self, like: torch.Tensor) -> torch.Tensor:
        """The mask as 0/1 values with ``like``'s device and dtype (cached)."""
        key = (like.device, like.dtype)
        if key not in self._cache:
            self._cache[key] = self.mask.to(device=like.device, dtype=like.dtype)
        return self._cache[key]

    def enforce(self, module: nn.Module) -> bool:
        """Zero the pruned entries of ``module.weight`` in place; True if any was non-zero."""
        w = module.weight
        with torch.no_grad():
            if w.shape != self.mask.shape:
                raise ConfigError(f"mask of shape {tuple(self.mask.shape)} does not fit weight of shape {tuple(w.shape)}")
            leaked = bool((w.detach() * (1 - self.factor(w))).count_nonzero())
            if leaked:
                w.mul_(self.factor(w))
        return leaked

    def __call__(self, module: nn.Module, args: tuple) -> None:
        w = module.weight
        if w.requires_grad and not getattr(w, "_obliviate_grad_masked", False):
            w.register_hook(_grad_hook_for(module))
            w._obliviate_grad_masked = True  # a deep copy's new parameter lacks the flag
        self.enforce(module)

    def __deepcopy__(self, memo: dict) -> "MaskHook":
        return MaskHook(self.mask.clone())


def _current_hook(module: nn.Module) -> MaskHook | None:
    return next((h for h in module._forward_pre_hooks.values() if isinstance(h, MaskHook)), None)


def _grad_hook_for(module: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """Gradient hook applying the mask *currently* attached to ``module`` (none: unchanged)."""
    ref = weakref.ref(module)

    def hook(grad: torch.Tensor) -> torch.Tensor:
        mod = ref()
        mask_hook = _current_hook(mod) if mod is not None else None
        return grad if mask_hook is None else grad * mask_hook.factor(grad)

    return hook


def attach_masks(model: nn.Module, masks: Masks) -> nn.Module:
    """Enforce ``masks`` on ``model`` from now on (replacing masks attached earlier).

    The pruned entries are zeroed immediately. Keys are ``"<module>.weight"`` names of
    ``model`` (a PEFT-wrapped model's ``base_layer`` names are resolved too).

    Raises:
        ConfigError: A key names no Linear/Conv module of ``model`` or a shape differs.
    """
    modules = dict(model.named_modules())
    for key, mask in masks.items():
        name = key[: -len(".weight")] if key.endswith(".weight") else key
        module = _resolve(modules, name)
        if module is None:
            raise ConfigError(f"mask entry '{key}' names no Linear/Conv module of the model; was the mask computed on another architecture?")
        if tuple(mask.shape) != tuple(module.weight.shape):
            raise ConfigError(f"mask '{key}' has shape {tuple(mask.shape)} but the weight has {tuple(module.weight.shape)}")
        _remove_hooks(module)
        hook = MaskHook(mask)
        module.register_forward_pre_hook(hook)
        if module.weight.requires_grad:
            hook(module, ())
        else:
            hook.enforce(module)
    return model


def _resolve(modules: dict[str, nn.Module], name: str) -> nn.Module | None:
    for cand in (name, f"base_model.model.{name}"):
        module = modules.get(cand)
        if module is not None and hasattr(module, "base_layer"):  # PEFT LoRA layer
            module = module.base_layer
        if isinstance(module, PRUNABLE_TYPES):
            return module
    return None


def _remove_hooks(module: nn.Module) -> None:
    for hid, hook in list(module._forward_pre_hooks.items()):
        if isinstance(hook, MaskHook):
            del module._forward_pre_hooks[hid]


def detach_masks(model: nn.Module) -> None:
    """Stop enforcing masks on ``model`` (weights keep their current values)."""
    for module in model.modules():
        _remove_hooks(module)


def attached_masks(model: nn.Module) -> Masks:
    """The masks currently enforced on ``model``, keyed by ``"<module>.weight"``."""
    out: Masks = {}
    for name, module in model.named_modules():
        for hook in module._forward_pre_hooks.values():
            if isinstance(hook, MaskHook):
                out[f"{name}.weight"] = hook.mask
    return out


def enforce_masks(model: nn.Module) -> int:
    """Zero every attached mask's pruned entries now; returns how many modules had leaks."""
    leaks = 0
    for module in model.modules():
        for hook in module._forward_pre_hooks.values():
            if isinstance(hook, MaskHook):
                leaks += hook.enforce(module)
    return leaks


# ----------------------------------------------------------------------------- storage
def save_masks(masks: Masks, path: str | os.PathLike) -> Path:
    """Save masks as a safetensors file of bool tensors (atomic write)."""
    from safetensors.torch import save

    return atomic_write_bytes(path, save({k: v.detach().bool().contiguous().cpu() for k, v in masks.items()}))


def load_masks(path: str | os.PathLike) -> Masks:
    """Load masks saved by :func:`save_masks`."""
    from safetensors.torch import load_file

    path = Path(path)
    if path.is_dir():
        path = path / "mask.safetensors"
    if not path.is_file():
        raise ConfigError(f"mask file '{path}' does not exist; give the mask.safetensors written by 'obliviate prune'")
    return {k: v.bool() for k, v in load_file(str(path)).items()}


# ----------------------------------------------------------------------------- measurement
@dataclass
class Sparsity:
    """Measured sparsity: exact zeros among prunable weights (never taken from a config)."""

    sparsity: float
    zeros: int
    total: int
    per_layer: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        """JSON-friendly form."""
        return {"sparsity": self.sparsity, "zeros": self.zeros, "total": self.total, "per_layer": self.per_layer}


@torch.no_grad()
def param_counts(model: nn.Module) -> dict[str, int]:
    """``{"params", "nonzero_params"}`` over all parameters (exact non-zero count)."""
    return {"params": sum(p.numel() for p in model.parameters()),
            "nonzero_params": sum(int(p.count_nonzero()) for p in model.parameters())}


@torch.no_grad()
def measure_sparsity(model: nn.Module, *, include_head: bool = False, head_name: str | None = None) -> Sparsity:
    """Fraction of exact zeros among the prunable weights of ``model``.

    For a PEFT model the frozen base weights are measured (adapter matrices are not
    counted); merge the adapters first to measure the weights the model really uses.
    """
    zeros = total = 0
    per_layer = {}
    for name, w in prunable_weights(model, include_head=include_head, head_name=head_name).items():
        z = int(w.numel() - torch.count_nonzero(w))
        zeros, total = zeros + z, total + w.numel()
        per_layer[name] = z / max(w.numel(), 1)
    return Sparsity(zeros / total if total else 0.0, zeros, total, per_layer)
