"""LoRA (PEFT) for any model: targets discovered from the live module graph.

``discover_targets`` returns the unique leaf names of ``nn.Linear`` / ``nn.Conv2d`` modules
(e.g. ``q_proj``, ``fc1``, ``conv2``), skipping the output head, so no architecture list
is hard-coded. Modules whose leaf name is a number (``nn.Sequential`` children such as a
ResNet's ``downsample.0``) are targeted by their full name. Grouped/depthwise convolutions
(``groups > 1``: ConvNeXt ``conv_dw``, EfficientNet, ResNeXt) are skipped, since PEFT can
neither adapt most of them nor merge them; when a leaf name is shared by grouped and plain
convolutions, the plain ones are listed by full name. ``apply_lora`` wraps a model so that
only adapter (and ``modules_to_save``) weights train.

Works for Hugging Face models, timm models (``resnet*``, ``vit_*``, ``convnext_*``, ...)
and plain PyTorch modules; ``save_pretrained`` / ``PeftModel.from_pretrained(base, dir)``
and ``merge_and_unload()`` behave as for any PEFT model.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from obliviate.errors import ConfigError

HEAD_NAMES = ("lm_head", "head", "fc", "classifier", "score")


def _eligible(module: nn.Module, kinds: tuple[type, ...]) -> bool:
    return isinstance(module, kinds) and getattr(module, "groups", 1) == 1


def discover_targets(model: nn.Module, kinds: tuple[type, ...] = (nn.Linear, nn.Conv2d), skip: Sequence[str] = HEAD_NAMES) -> list[str]:
    """LoRA target names found in the live model, excluding output heads (``skip``).

    Returns unique leaf names (``"qkv"``, ``"conv1"``) when every module with that leaf name
    can be adapted, full module names otherwise (numeric leaves, leaves shared with grouped
    convolutions).
    """
    by_leaf: dict[str, list[tuple[str, bool]]] = {}
    for full, module in model.named_modules():
        if full and isinstance(module, kinds):
            ok = _eligible(module, kinds) and not set(full.split(".")) & set(skip)
            by_leaf.setdefault(full.rsplit(".", 1)[-1], []).append((full, ok))
    names: list[str] = []
    for leaf, entries in by_leaf.items():
        if all(ok for _, ok in entries) and not leaf.isdigit():
            names.append(leaf)
        else:
            names.extend(full for full, ok in entries if ok)
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
    try:
        return get_peft_model(model, config)
    except ValueError as exc:  # e.g. a grouped conv whose groups do not divide r
        raise ConfigError(f"LoRA could not adapt the model: {exc}; discovered targets: {discover_targets(model)}") from None
