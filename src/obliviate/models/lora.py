"""LoRA (PEFT) for any model: targets discovered from the live module graph.

``discover_targets`` returns the unique leaf names of ``nn.Linear`` / ``nn.Conv2d`` modules
(e.g. ``q_proj``, ``fc1``, ``conv2``), skipping the output head, so no architecture list
is hard-coded. ``apply_lora`` wraps a model so that only adapter weights train.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from obliviate.errors import ConfigError

HEAD_NAMES = ("lm_head", "head", "fc", "classifier", "score")


def discover_targets(model: nn.Module, kinds: tuple[type, ...] = (nn.Linear, nn.Conv2d), skip: Sequence[str] = HEAD_NAMES) -> list[str]:
    """Unique leaf names of ``kinds`` modules, excluding output heads (``skip``)."""
    names: list[str] = []
    for full, module in model.named_modules():
        if isinstance(module, kinds) and full:
            leaf = full.rsplit(".", 1)[-1]
            if leaf not in skip and leaf not in names and not leaf.isdigit():
                names.append(leaf)
    if not names:  # e.g. nn.Sequential children named "0", "1": target by full name
        names = [full for full, m in model.named_modules() if isinstance(m, kinds) and full and not set(full.split(".")) & set(skip)]
    return names


def apply_lora(model: nn.Module, *, r: int = 8, alpha: float = 16, dropout: float = 0.0,
               target_modules: Sequence[str] | None = None, modules_to_save: Sequence[str] | None = None):
    """Wrap ``model`` with LoRA adapters (PEFT); only adapter (and ``modules_to_save``) weights train.

    Args:
        model: Any ``nn.Module`` (HF causal LM, timm, plain PyTorch).
        r, alpha, dropout: LoRA rank, scaling numerator and dropout.
        target_modules: Module names to adapt; default: :func:`discover_targets`.
        modules_to_save: Extra modules trained in full (e.g. a classifier head).
    """
    from peft import LoraConfig, get_peft_model

    targets = list(target_modules) if target_modules else discover_targets(model)
    if not targets:
        raise ConfigError("no nn.Linear/nn.Conv2d modules found for LoRA; pass lora.target_modules=[...]")
    known = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()} | {n for n, _ in model.named_modules()}
    missing = [t for t in targets if t not in known]
    if missing:
        raise ConfigError(f"LoRA target module(s) {missing} not found in the model; discovered targets: {discover_targets(model)}")
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets,
                        modules_to_save=list(modules_to_save) if modules_to_save else None)
    return get_peft_model(model, config)
