"""Physical removal of pruned CNN output channels (smaller convs, fewer parameters, faster).

:func:`remove_conv_channels` takes the group keep masks of a CNN (conv output-channel group
sets from :func:`~obliviate.pruning.groups.discover_groups`) and, for every group set whose
pruned channels can be removed *safely*, replaces

- the producer ``nn.Conv2d`` by a smaller one (``out_channels`` reduced, weight rows and bias
  sliced),
- the ``BatchNorm2d`` member of the set by a smaller one (affine weight/bias, running stats),
- every consumer on its input dimension: the next ``nn.Conv2d`` (``in_channels``), or the
  ``nn.Linear`` after a flatten (its input columns are channel-major blocks of ``H*W``
  features, ``in_features = C * H * W``).

The data flow is read from a ``torch.fx`` trace of the model, so "the consumers" are exact:
between the producer and its consumers only channel-wise, zero-preserving operations are
allowed (the set's own BatchNorm member, ReLU-like activations with ``f(0) = 0``, pooling,
dropout, identity, flatten before a Linear). A pruned channel is exactly 0 there in the
masked model (zeroed weights by :func:`~obliviate.pipelines.prune_structured.bake_masks` or
soft :class:`~obliviate.pruning.groups.GroupMasks` hooks), so removing it, together with the
consumers' matching inputs, computes the same outputs. A set is **skipped** (kept zeroed +
masked, listed with the reason in the report) when its channels reach anything else: a
residual addition (ResNet ``BasicBlock``: ``bn2`` outputs and shortcuts are added, the stem
feeds the first identity shortcut), a concatenation, a reshape other than flatten, a grouped /
depthwise consumer, a module called twice, the model output; or when it would keep no channel;
or when the model cannot be traced.

The element masks attached by :func:`~obliviate.pruning.masks.attach_masks` are sliced the
same way and re-attached (masks of removed rows/columns never come back with the old shapes);
soft ``GroupMasks`` passed in are reduced to the sets that were not removed and re-attached.

**Saving and reloading.** The shrunk model's ``state_dict`` no longer fits a freshly built
(full-size) architecture. The report's ``"shapes"`` records the new sizes of every replaced
module; :func:`shrink_to` rebuilds a fresh model to those sizes (then ``load_state_dict``
works), :func:`save_physical` / :func:`read_shapes` store them in the safetensors metadata
(:func:`obliviate.checkpoint.load_model` shrinks a fresh model to them before loading),
and :func:`expand_state_dict` turns the shrunk weights (or masks) back into the equivalent
full-size tensors (removed channels = 0 / False) for tools that build the full architecture.
"""

from __future__ import annotations

import json
import logging
import operator
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from obliviate.errors import ConfigError

log = logging.getLogger(__name__)

METADATA_KEY = "obliviate.physical_cnn"

# Channel-wise modules with f(0) = 0 (a zero channel stays zero, channels never mix).
_ZERO_PRESERVING_MODULES: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.CELU, nn.SELU, nn.GELU, nn.SiLU, nn.Mish, nn.Hardswish, nn.Hardtanh,
    nn.Tanh, nn.Softsign, nn.Tanhshrink, nn.Hardshrink, nn.Softshrink, nn.Dropout, nn.Dropout2d, nn.AlphaDropout,
    nn.Identity, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d,
)
_POOLS = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
_F = nn.functional
_ZERO_PRESERVING_FUNCTIONS = {
    torch.relu, torch.relu_, _F.relu, _F.relu6, _F.leaky_relu, _F.elu, _F.gelu, _F.silu, _F.mish, _F.hardswish, _F.hardtanh,
    torch.tanh, _F.tanh, _F.dropout, _F.dropout2d, _F.max_pool2d, _F.avg_pool2d, _F.adaptive_avg_pool2d, _F.adaptive_max_pool2d,
}
_ZERO_PRESERVING_METHODS = {"relu", "relu_", "tanh", "contiguous", "clone", "detach"}


class _Skip(Exception):
    """A group set cannot be removed; the message is the reason."""


def _n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _keep_masks(masks: Any) -> dict[str, torch.Tensor]:
    keep = getattr(masks, "keep", masks)
    return {k: torch.as_tensor(v, dtype=torch.bool).cpu() for k, v in dict(keep).items()}


def _group_sets(model: nn.Module, masks: Any) -> dict[str, Any]:
    groups = getattr(masks, "groups", None)
    if groups is not None:
        return dict(groups)
    from obliviate.pruning.groups import discover_groups

    return {g.key: g for g in discover_groups(model)}


def _is_flatten(node: Any, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        m = modules.get(node.target)
        return isinstance(m, nn.Flatten) and m.start_dim == 1 and m.end_dim == -1
    start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
    end = node.args[2] if len(node.args) > 2 else node.kwargs.get("end_dim", -1)
    if node.op == "call_function" and node.target is torch.flatten:
        return start == 1 and end == -1
    if node.op == "call_method" and node.target == "flatten":
        return start == 1 and end == -1
    return False


def _passes_through(node: Any, modules: dict[str, nn.Module]) -> bool:
    """Channel-wise and zero-preserving (with ``node``'s first argument the tensor in flight)."""
    if node.op == "call_module":
        return isinstance(modules.get(node.target), _ZERO_PRESERVING_MODULES)
    if node.op == "call_function":
        return node.target in _ZERO_PRESERVING_FUNCTIONS
    if node.op == "call_method":
        return node.target in _ZERO_PRESERVING_METHODS
    return False


def _describe(node: Any) -> str:
    if node.op == "call_function" and node.target in (operator.add, operator.iadd, torch.add):
        return "a residual addition"
    if node.op == "call_function" and node.target in (torch.cat, torch.concat, torch.stack):
        return "a concatenation"
    if node.op == "output":
        return "the model output"
    target = getattr(node.target, "__name__", node.target)
    return f"{node.op} '{target}'"


def _plan(gs: Any, keep: torch.Tensor, graph_nodes: dict[str, Any], calls: dict[str, int],
          modules: dict[str, nn.Module]) -> dict[str, Any]:
    """The slicing of one group set: ``{"out": {name: idx}, "in_conv": {name: idx}, "in_linear": {name: (idx, block)}}``."""
    conv_name = gs.members[0].name
    conv = modules[conv_name]
    if hasattr(conv, "base_layer"):
        raise ConfigError(f"'{conv_name}' is an unmerged LoRA layer; call model = model.merge_and_unload() "
                          "before removing channels")
    if not isinstance(conv, nn.Conv2d) or conv.groups != 1:
        raise _Skip("producer is not a plain nn.Conv2d (grouped/depthwise convs are not removed)")
    if not bool(keep.any()):
        raise _Skip("would keep no channel")
    if conv_name not in graph_nodes or calls.get(conv_name, 0) != 1:
        raise _Skip("the conv is not called exactly once as a module in the traced forward")
    bn_members = {m.name for m in gs.members if m.kind == "bn"}
    kept = gs.members[0].index[keep].flatten().sort().values
    n = conv.out_channels
    plan: dict[str, Any] = {"out": {conv_name: kept}, "in_conv": {}, "in_linear": {}}
    stack = [(u, False) for u in graph_nodes[conv_name].users]
    seen: set[tuple[str, bool]] = set()
    while stack:
        node, flat = stack.pop()
        if (node.name, flat) in seen:
            continue
        seen.add((node.name, flat))
        mod = modules.get(node.target) if node.op == "call_module" else None
        if mod is not None and calls.get(node.target, 0) != 1 and not isinstance(mod, _ZERO_PRESERVING_MODULES):
            raise _Skip(f"module '{node.target}' on the channel path is called {calls.get(node.target, 0)} times")
        if mod is not None and hasattr(mod, "base_layer"):
            raise ConfigError(f"'{node.target}' is an unmerged LoRA layer; merge the adapters before removing channels")
        if not flat and isinstance(mod, nn.BatchNorm2d):
            if node.target not in bn_members or mod.num_features != n:
                raise _Skip(f"BatchNorm '{node.target}' on the channel path is not masked with the set (its shift would survive)")
            plan["out"][node.target] = kept
        elif not flat and isinstance(mod, nn.Conv2d):
            if mod.groups != 1 or mod.in_channels != n:
                raise _Skip(f"consumer '{node.target}' is a grouped/depthwise conv")
            plan["in_conv"][node.target] = kept
            continue
        elif flat and isinstance(mod, nn.Linear):
            if mod.in_features % n:
                raise _Skip(f"Linear '{node.target}' has {mod.in_features} inputs, not a multiple of {n} channels")
            block = mod.in_features // n
            cols = (kept.view(-1, 1) * block + torch.arange(block).view(1, -1)).flatten()  # channel-major [c, h*w]
            plan["in_linear"][node.target] = cols
            continue
        elif not flat and _is_flatten(node, modules):
            flat = True
        elif not _passes_through(node, modules) or (flat and (isinstance(mod, _POOLS) or "pool" in str(node.target))):
            raise _Skip(f"its channels feed {_describe(node)}" + (" after flatten" if flat else ""))
        stack.extend((u, flat) for u in node.users)
    return plan


def _new_conv(old: nn.Conv2d, out_idx: torch.Tensor | None, in_idx: torch.Tensor | None) -> nn.Conv2d:
    w = old.weight.detach()
    if out_idx is not None:
        w = w.index_select(0, out_idx.to(w.device))
    if in_idx is not None:
        w = w.index_select(1, in_idx.to(w.device))
    new = nn.Conv2d(w.shape[1], w.shape[0], old.kernel_size, old.stride, old.padding, old.dilation, old.groups,
                    old.bias is not None, old.padding_mode, device=w.device, dtype=w.dtype)
    with torch.no_grad():
        new.weight.copy_(w)
        if old.bias is not None:
            b = old.bias.detach()
            new.bias.copy_(b.index_select(0, out_idx.to(b.device)) if out_idx is not None else b)
            new.bias.requires_grad_(old.bias.requires_grad)
    new.weight.requires_grad_(old.weight.requires_grad)
    return new


def _new_bn(old: nn.BatchNorm2d, idx: torch.Tensor) -> nn.BatchNorm2d:
    ref = old.weight if old.affine else old.running_mean
    new = nn.BatchNorm2d(len(idx), old.eps, old.momentum, old.affine, old.track_running_stats,
                         device=ref.device if ref is not None else None, dtype=ref.dtype if ref is not None else None)
    with torch.no_grad():
        for name in ("weight", "bias"):
            p = getattr(old, name)
            if p is not None:
                getattr(new, name).copy_(p.detach().index_select(0, idx.to(p.device)))
                getattr(new, name).requires_grad_(p.requires_grad)
        for name in ("running_mean", "running_var"):
            b = getattr(old, name)
            if b is not None:
                getattr(new, name).copy_(b.index_select(0, idx.to(b.device)))
        if old.num_batches_tracked is not None:
            new.num_batches_tracked.copy_(old.num_batches_tracked)
    return new


def _new_linear(old: nn.Linear, cols: torch.Tensor) -> nn.Linear:
    w = old.weight.detach().index_select(1, cols.to(old.weight.device))
    new = nn.Linear(w.shape[1], w.shape[0], old.bias is not None, device=w.device, dtype=w.dtype)
    with torch.no_grad():
        new.weight.copy_(w)
        new.weight.requires_grad_(old.weight.requires_grad)
        if old.bias is not None:
            new.bias.copy_(old.bias.detach())
            new.bias.requires_grad_(old.bias.requires_grad)
    return new


def _carry_hooks(old: nn.Module, new: nn.Module) -> None:
    """Keep foreign hooks (not obliviate's masks, which are re-attached by the caller)."""
    from obliviate.pruning.masks import MaskHook

    for attr in ("_forward_pre_hooks", "_forward_hooks"):
        for hid, hook in getattr(old, attr).items():
            owner = getattr(hook, "__self__", None)
            if isinstance(hook, MaskHook) or type(owner).__name__ == "_MaskHook":
                continue
            getattr(new, attr)[hid] = hook
    new.train(old.training)


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def module_shapes(module: nn.Module) -> dict[str, Any]:
    """The constructor sizes of a replaced module (what :func:`shrink_to` rebuilds)."""
    if isinstance(module, nn.Conv2d):
        return {"type": "Conv2d", "in_channels": module.in_channels, "out_channels": module.out_channels}
    if isinstance(module, nn.BatchNorm2d):
        return {"type": "BatchNorm2d", "num_features": module.num_features}
    if isinstance(module, nn.Linear):
        return {"type": "Linear", "in_features": module.in_features, "out_features": module.out_features}
    raise ConfigError(f"unsupported module type {type(module).__name__}")


def remove_conv_channels(model: nn.Module, masks: Any) -> dict[str, Any]:
    """Physically remove the pruned conv output channels of ``model`` where it is safe (in place).

    Args:
        model: A plain CNN (LoRA adapters merged) whose pruned channels are zero: baked by
            ``bake_masks`` or masked by soft ``GroupMasks`` hooks.
        masks: The :class:`~obliviate.pruning.groups.GroupMasks` (or a ``{set key: keep [n]}``
            dict of conv group sets of ``model``). A ``GroupMasks`` is detached, reduced to the
            sets that were *not* removed and re-attached to the shrunk model.

    Returns:
        JSON-friendly report: ``removed`` (bool), ``params_before``, ``params_after``,
        ``removed_sets`` (``{key: {"channels_before", "channels_after", "consumers"}}``),
        ``skipped_sets`` (``{key: reason}``, only sets with pruned channels), ``shapes``
        (``{module: sizes}`` of every replaced module, for :func:`shrink_to`) and ``kept``
        (``{module: {"before": old sizes, "out" | "in": kept indices}}``, for :func:`expand_state_dict`).

    Raises:
        ConfigError: A member is an unmerged LoRA layer.
    """
    from obliviate.pruning.masks import attach_masks, attached_masks, detach_masks

    keep = _keep_masks(masks)
    sets = _group_sets(model, masks)
    modules = dict(model.named_modules())
    before = _n_params(model)
    report: dict[str, Any] = {"removed": False, "params_before": before, "params_after": before, "removed_sets": {},
                              "skipped_sets": {}, "shapes": {}, "kept": {}}
    todo = {k: gs for k, gs in sets.items() if k in keep and gs.kind == "conv" and not bool(keep[k].all())}
    if not todo:
        return report
    for gs in todo.values():
        for member in gs.members:
            if hasattr(modules.get(member.name), "base_layer"):
                raise ConfigError(f"'{member.name}' is an unmerged LoRA layer; call model = model.merge_and_unload() "
                                  "before removing channels")
    try:
        import torch.fx

        gm = torch.fx.symbolic_trace(model)
    except Exception as exc:  # noqa: BLE001 - dynamic control flow, unsupported ops
        reason = f"torch.fx could not trace the model ({type(exc).__name__}: {str(exc)[:120]})"
        report["skipped_sets"] = dict.fromkeys(todo, reason)
        log.warning("physical CNN channel removal skipped: %s", reason)
        return report
    calls: dict[str, int] = {}
    graph_nodes: dict[str, Any] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
            graph_nodes[node.target] = node
    plans: dict[str, dict[str, Any]] = {}
    for key, gs in todo.items():
        try:
            plans[key] = _plan(gs, keep[key], graph_nodes, calls, modules)
        except _Skip as exc:
            report["skipped_sets"][key] = str(exc)
    # merge the per-set slicings per module (a conv can lose output rows and input columns)
    out_idx: dict[str, torch.Tensor] = {}
    in_idx: dict[str, torch.Tensor] = {}
    for key, plan in plans.items():
        out_idx.update(plan["out"])
        in_idx.update(plan["in_conv"])
        for name, cols in plan["in_linear"].items():
            in_idx[name] = cols
        report["removed_sets"][key] = {"channels_before": int(keep[key].numel()), "channels_after": int(keep[key].sum()),
                                       "consumers": sorted([*plan["in_conv"], *plan["in_linear"]])}
    if not plans:
        return report
    element = attached_masks(model)
    detach_masks(model)
    if hasattr(masks, "detach"):
        masks.detach()
    changed = sorted(set(out_idx) | set(in_idx))
    for name in changed:
        old = modules[name]
        o, i = out_idx.get(name), in_idx.get(name)
        if isinstance(old, nn.Conv2d):
            new = _new_conv(old, o, i)
        elif isinstance(old, nn.BatchNorm2d):
            new = _new_bn(old, o)
        else:
            new = _new_linear(old, i)
        _carry_hooks(old, new)
        _set_module(model, name, new)
        report["shapes"][name] = module_shapes(new)
        report["kept"][name] = {"before": module_shapes(old), **({"out": o.tolist()} if o is not None else {}),
                                **({"in": i.tolist()} if i is not None else {})}
        mkey = f"{name}.weight"
        if mkey in element and not isinstance(new, nn.BatchNorm2d):
            m = element[mkey]
            if o is not None:
                m = m.index_select(0, o)
            if i is not None:
                m = m.index_select(1, i)
            element[mkey] = m
    attach_masks(model, element)
    if hasattr(masks, "groups") and hasattr(masks, "attach"):
        for key in plans:
            masks.groups.pop(key, None)
            masks.keep.pop(key, None)
        masks.version = getattr(masks, "version", 0) + 1
        masks.attach(model)
    report["removed"] = True
    report["params_after"] = _n_params(model)
    log.info("physically removed pruned channels of %d conv group sets (%d skipped): %d -> %d parameters", len(plans),
             len(report["skipped_sets"]), before, report["params_after"])
    return report


def shrink_to(model: nn.Module, shapes: dict[str, dict[str, Any]]) -> nn.Module:
    """Replace the modules named in ``shapes`` (a removal report's ``"shapes"``) by modules of those sizes.

    The new modules keep the constructor options of the old ones; their values are
    placeholders until ``load_state_dict`` of the shrunk checkpoint.

    Raises:
        ConfigError: A module is missing or of another type (the model is not the architecture
            the channels were removed from).
    """
    modules = dict(model.named_modules())
    for name, spec in shapes.items():
        old = modules.get(name)
        if old is None or type(old).__name__ != spec["type"]:
            raise ConfigError(f"cannot rebuild the physically pruned model: module '{name}' is "
                              f"{type(old).__name__ if old is not None else 'missing'}, expected {spec['type']}; "
                              "build the same architecture the channels were removed from")
        if spec["type"] == "Conv2d":
            o = torch.arange(spec["out_channels"]) if spec["out_channels"] != old.out_channels else None
            i = torch.arange(spec["in_channels"]) if spec["in_channels"] != old.in_channels else None
            if spec["out_channels"] > old.out_channels or spec["in_channels"] > old.in_channels:
                raise ConfigError(f"module '{name}' is smaller than the checkpoint's; build the original architecture")
            new = _new_conv(old, o, i)
        elif spec["type"] == "BatchNorm2d":
            new = _new_bn(old, torch.arange(spec["num_features"]))
        else:
            new = _new_linear(old, torch.arange(spec["in_features"]))
        _carry_hooks(old, new)
        _set_module(model, name, new)
    return model


def expand_state_dict(state: dict[str, torch.Tensor], report: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Full-size tensors equivalent to a shrunk ``state`` (model weights or bool masks).

    Removed rows/columns are filled with 0 (``running_var`` with 1, bool masks with False), so a
    freshly built full-size model loading the result computes what the shrunk model computes.
    """
    out = dict(state)
    for name, info in report.get("kept", {}).items():
        before = info["before"]
        for suffix in ("weight", "bias", "running_mean", "running_var"):
            key = f"{name}.{suffix}"
            if key not in state:
                continue
            t = state[key]
            if before["type"] == "Conv2d":
                shape = ([before["out_channels"], before["in_channels"], *t.shape[2:]] if suffix == "weight"
                         else [before["out_channels"]])
            elif before["type"] == "BatchNorm2d":
                shape = [before["num_features"]]
            else:
                shape = [before["out_features"], before["in_features"]] if suffix == "weight" else list(t.shape)
            fill = 1 if suffix == "running_var" else 0
            full = torch.full(shape, fill, dtype=t.dtype, device=t.device)
            rows = torch.tensor(info["out"]) if "out" in info else torch.arange(shape[0])
            if suffix == "weight" and len(shape) > 1:
                cols = torch.tensor(info["in"]) if "in" in info else torch.arange(shape[1])
                full[rows.view(-1, 1), cols.view(1, -1)] = t
            elif before["type"] == "Linear":
                full = t.clone()
            else:
                full[rows] = t
            out[key] = full
    return out


def save_physical(model: nn.Module, report: dict[str, Any], path: str | os.PathLike) -> Path:
    """Save the shrunk ``state_dict`` as safetensors with the new module sizes in the metadata."""
    from safetensors.torch import save

    from obliviate.io import atomic_write_bytes

    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    return atomic_write_bytes(path, save(state, metadata={METADATA_KEY: json.dumps(report["shapes"])}))


def read_shapes(path: str | os.PathLike) -> dict[str, Any] | None:
    """The module sizes stored by :func:`save_physical` (None for an ordinary checkpoint)."""
    path = Path(path)
    if path.suffix != ".safetensors" or not path.is_file():
        return None
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    return json.loads(meta[METADATA_KEY]) if METADATA_KEY in meta else None


__all__ = ["expand_state_dict", "module_shapes", "read_shapes", "remove_conv_channels", "save_physical",
           "shrink_to"]
