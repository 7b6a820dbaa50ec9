"""Saving and reloading physically pruned HF decoders whose layers differ in width.

:func:`~obliviate.pruning.groups.remove_pruned_groups` shrinks each layer to the groups it
keeps. When every layer keeps the same number of KV-head groups and MLP channels (local
ranking over all layers) the standard config describes the result (``num_key_value_heads``,
``num_attention_heads``, ``intermediate_size``) and ``save_pretrained`` / ``from_pretrained``
round-trip it as is.

Per-layer widths (global ranking, or ``protect_layers``) cannot be described by the stock
config of Llama-style decoders: in transformers 5 ``LlamaConfig.intermediate_size`` and the
head counts are one integer for all layers (per-layer lists exist only in other
architectures, e.g. Gemma3n's ``intermediate_size`` list or Laguna's
``num_attention_heads_per_layer``, whose layers are not Llama layers), and loading custom
modelling code would need ``trust_remote_code``. So such a model is saved **zero-padded**:
every layer is widened to the widest layer of its kind with all-zero groups (zero q/k/v
rows and o_proj columns for a KV-head group, zero gate/up rows and down_proj column for an
MLP channel). A zero group contributes exactly nothing (its value vectors and o_proj columns
are zero; ``silu(0)·0 = 0``), so the padded model computes what the pruned model computes and
reloads with plain ``AutoModelForCausalLM.from_pretrained`` in any tool. The config records
the real per-layer widths under ``obliviate_pruned``; :func:`strip_padding` (called by
obliviate's model loader) removes the padding again, so the reloaded model is as small and
as fast as the pruned one. Without it (a plain ``from_pretrained``) the padded layers cost
what the widest layer costs.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from obliviate.errors import ConfigError
from obliviate.pruning.groups import GroupMasks, GroupSet, discover_groups, remove_pruned_groups

CONFIG_KEY = "obliviate_pruned"


def layer_widths(model: nn.Module) -> dict[str, int]:
    """Live number of groups per group set (``{"model.layers.0.mlp": 768, ...}``)."""
    return {g.key: g.n_groups for g in discover_groups(model)}


def is_uniform(groups: list[GroupSet]) -> bool:
    """True when all sets of one kind (attention / MLP) have the same number of groups."""
    by_kind: dict[str, set[int]] = {}
    for g in groups:
        by_kind.setdefault(g.kind, set()).add(g.n_groups)
    return all(len(v) == 1 for v in by_kind.values())


def _pad_module(module: nn.Module, dim: int, extra: int) -> None:
    """Append ``extra`` zero rows (``dim=0``, with zero bias) or zero columns (``dim=1``)."""
    w = module.weight
    shape = list(w.shape)
    shape[dim] = extra
    with torch.no_grad():
        module.weight = nn.Parameter(torch.cat([w.detach(), w.new_zeros(shape)], dim=dim), requires_grad=w.requires_grad)
        if dim == 0 and getattr(module, "bias", None) is not None:
            b = module.bias
            module.bias = nn.Parameter(torch.cat([b.detach(), b.new_zeros(extra)]), requires_grad=b.requires_grad)
    if isinstance(module, nn.Linear):
        module.in_features, module.out_features = module.weight.shape[1], module.weight.shape[0]


def pad_to_uniform(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose layers are zero-padded to the widest layer of each kind.

    The copy computes the same outputs, its config describes its (uniform) shapes, and
    ``config.obliviate_pruned = {"kept": {set key: real width}}`` records the real widths for
    :func:`strip_padding`. A model that is already uniform is copied unchanged (no key).

    Raises:
        ConfigError: The model has no decoder groups (CNN or unknown architecture).
    """
    out = copy.deepcopy(model)
    groups = discover_groups(out)
    if any(g.kind == "conv" for g in groups):
        raise ConfigError("pad_to_uniform is for HF decoders; save pruned CNNs with obliviate.pruning.physical_cnn")
    if is_uniform(groups):
        return out
    widest: dict[str, int] = {}
    for g in groups:
        widest[g.kind] = max(widest.get(g.kind, 0), g.n_groups)
    modules = dict(out.named_modules())
    for g in groups:
        extra = widest[g.kind] - g.n_groups
        for member in g.members:
            if extra:
                _pad_module(modules[member.name], member.dim, extra * member.index.shape[1])
        if g.kind == "attention":
            attn = modules[g.key]
            if hasattr(attn, "num_heads"):
                attn.num_heads = widest["attention"] * g.info["n_rep"]
            if hasattr(attn, "num_key_value_heads"):
                attn.num_key_value_heads = widest["attention"]
    config = out.config
    attn_sets = [g for g in groups if g.kind == "attention"]
    if attn_sets:
        config.head_dim = attn_sets[0].info["head_dim"]
        config.num_key_value_heads = widest["attention"]
        config.num_attention_heads = widest["attention"] * attn_sets[0].info["n_rep"]
    if "mlp" in widest:
        config.intermediate_size = widest["mlp"]
    setattr(config, CONFIG_KEY, {"kept": {g.key: g.n_groups for g in groups}})
    return out


def _match(kept: dict[str, int], key: str) -> int:
    hits = [v for k, v in kept.items() if k == key or k.endswith("." + key) or key.endswith("." + k)]
    if len(hits) != 1:
        raise ConfigError(f"config.{CONFIG_KEY} has no unique width for group set '{key}' ({len(hits)} matches)")
    return int(hits[0])


def strip_padding(model: nn.Module) -> dict[str, Any] | None:
    """Remove the zero padding written by :func:`pad_to_uniform` (in place; a no-op without it).

    Returns:
        The removal report of :func:`~obliviate.pruning.groups.remove_pruned_groups`, or None
        when the config has no ``obliviate_pruned`` entry.
    """
    info = getattr(getattr(model, "config", None), CONFIG_KEY, None)
    if not info:
        return None
    groups = discover_groups(model)
    keep = {}
    for g in groups:
        n = _match(info["kept"], g.key)
        if not 0 < n <= g.n_groups:
            raise ConfigError(f"config.{CONFIG_KEY} says '{g.key}' keeps {n} groups, but the model has {g.n_groups}")
        keep[g.key] = torch.arange(g.n_groups) < n  # padding is always appended at the end
    return remove_pruned_groups(model, GroupMasks(groups, keep), allow_nonuniform=True)


__all__ = ["CONFIG_KEY", "is_uniform", "layer_widths", "pad_to_uniform", "strip_padding"]
