"""Structured pruning groups discovered from the live model, soft group masks, physical removal.

A *group* is the smallest unit that structured pruning removes as a whole. Groups are found by
walking the live module graph and reading shapes from the modules themselves (plus
``head_dim`` / ``num_key_value_groups`` from the attention module or the config); nothing
(head count, head size) is hard-coded.

**HF decoders** (Llama / Qwen / Mistral style: every module with ``self_attn`` and ``mlp``
children is a decoder layer):

- *Attention groups, GQA-aware*: **one group = one key/value head together with the query
  heads that read it** (``n_rep = num_attention_heads // num_key_value_heads`` query heads).
  Members: the group's q rows (``n_rep * head_dim``), k rows and v rows (``head_dim`` each) and
  the matching o_proj input columns (``n_rep * head_dim``). Pruning a whole KV group keeps the
  query/KV ratio, so HF's ``repeat_kv`` mapping (query head ``j`` reads KV head
  ``j // n_rep``) stays valid after physical removal. (The alternative, one group per query
  head with k/v shared, cannot be removed physically unless every KV group loses the same
  number of query heads, so it is not offered.) With MHA (``n_rep = 1``) a group is one head.
- *MLP channel groups*: one group = one intermediate channel: gate_proj row + up_proj row +
  down_proj column (gate is optional).

**CNNs**: one group = one output channel of an ``nn.Conv2d`` (plus the channel of a
``BatchNorm2d`` registered right after it, masked on its output so its shift cannot revive
the channel). Physical removal here is for HF decoders; CNN channels are removed by
:func:`obliviate.pruning.physical_cnn.remove_conv_channels` where their consumers allow it
(not for channels feeding residual adds, which stay zeroed under soft masks).

**Soft masks** (:class:`GroupMasks`) are forward hooks: row members have their *output*
channels multiplied by the mask (this also masks biases and the LoRA delta of a PEFT layer),
column members have their *input* features multiplied by it. Weights are never modified, so
undoing a prune step is flipping the mask back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from obliviate.errors import ConfigError

_PEFT_PARTS = {"lora_A", "lora_B", "lora_embedding_A", "lora_embedding_B", "base_layer", "lora_dropout",
               "lora_magnitude_vector", "original_module", "modules_to_save"}


_CHANNELS_FIRST = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.modules.batchnorm._BatchNorm)


def base_layer(module: nn.Module) -> nn.Module:
    """The frozen base ``nn.Linear``/``nn.Conv2d`` of a PEFT LoRA layer (or ``module`` itself)."""
    return module.base_layer if hasattr(module, "base_layer") else module


@dataclass
class Member:
    """One module's share of a group set.

    Attributes:
        name: Full module name (the PEFT LoRA layer if wrapped, so the LoRA delta is covered).
        dim: 0 = output rows / channels of the weight, 1 = input columns.
        index: ``[n_groups, per_group]`` weight indices along ``dim`` belonging to each group.
        kind: "weight" (has a prunable weight) or "bn" (mask-only member, e.g. BatchNorm).
    """

    name: str
    dim: int
    index: torch.Tensor
    kind: str = "weight"


@dataclass
class GroupSet:
    """All groups of one structure (one attention block, one MLP, one conv layer).

    Attributes:
        key: Name of the owning module (``"model.layers.0.self_attn"``); the key of every
            per-group score dict.
        kind: "attention", "mlp" or "conv" (global ranking compares groups of one kind).
        n_groups: Number of groups.
        members: The modules forming the groups.
        info: Structure facts (``head_dim``, ``n_rep`` for attention).
    """

    key: str
    kind: str
    n_groups: int
    members: list[Member]
    info: dict[str, Any] = field(default_factory=dict)


def _contiguous(n_groups: int, per_group: int) -> torch.Tensor:
    return torch.arange(n_groups * per_group).view(n_groups, per_group)  # [n_groups, per_group]


def _model_config(model: nn.Module) -> Any:
    return getattr(model, "config", None)


def _attention_groups(name: str, attn: nn.Module, config: Any) -> GroupSet:
    q, k, o = (base_layer(getattr(attn, p)) for p in ("q_proj", "k_proj", "o_proj"))
    head_dim = getattr(attn, "head_dim", None) or getattr(config, "head_dim", None)
    if head_dim is None and config is not None:
        head_dim = config.hidden_size // config.num_attention_heads
    n_rep = getattr(attn, "num_key_value_groups", None)
    if n_rep is None and config is not None:
        n_rep = config.num_attention_heads // getattr(config, "num_key_value_heads", config.num_attention_heads)
    if not head_dim or not n_rep:
        raise ConfigError(f"cannot read head_dim / num_key_value_groups for '{name}'; set them in the model config")
    n_kv, rem = divmod(k.weight.shape[0], head_dim)  # live shape, also after physical pruning
    if rem or q.weight.shape[0] != n_kv * n_rep * head_dim or o.weight.shape[1] != q.weight.shape[0]:
        raise ConfigError(
            f"'{name}': q/k/o shapes {tuple(q.weight.shape)}/{tuple(k.weight.shape)}/{tuple(o.weight.shape)} do not "
            f"match head_dim={head_dim}, {n_rep} query heads per KV head")
    q_idx = _contiguous(n_kv, n_rep * head_dim)  # [n_kv, n_rep*hd]: query heads j*n_rep.. of KV head j
    kv_idx = _contiguous(n_kv, head_dim)  # [n_kv, hd]
    members = [Member(f"{name}.q_proj", 0, q_idx), Member(f"{name}.k_proj", 0, kv_idx),
               Member(f"{name}.v_proj", 0, kv_idx.clone()), Member(f"{name}.o_proj", 1, q_idx.clone())]
    return GroupSet(name, "attention", n_kv, members, {"head_dim": int(head_dim), "n_rep": int(n_rep)})


def _mlp_groups(name: str, mlp: nn.Module) -> GroupSet:
    down = base_layer(mlp.down_proj)
    n = down.weight.shape[1]
    idx = _contiguous(n, 1)  # [n, 1]
    members = [Member(f"{name}.{p}", 0, idx.clone()) for p in ("gate_proj", "up_proj") if hasattr(mlp, p)]
    if not members:
        raise ConfigError(f"'{name}' has down_proj but neither gate_proj nor up_proj")
    members.append(Member(f"{name}.down_proj", 1, idx.clone()))
    return GroupSet(name, "mlp", n, members)


def discover_groups(model: nn.Module) -> list[GroupSet]:
    """Find the structured groups of ``model`` (HF decoder or CNN), in registration order.

    Args:
        model: An HF causal LM (optionally PEFT-wrapped) or a CNN.

    Returns:
        One :class:`GroupSet` per attention block and MLP (decoders), or per ``nn.Conv2d``
        (CNNs; output heads are never ``Conv2d`` in practice, Linear layers are not grouped).

    Raises:
        ConfigError: No groups were found, or shapes contradict the config.
    """
    config = _model_config(model)
    modules = dict(model.named_modules())
    sets: list[GroupSet] = []
    for name, m in modules.items():
        if set(name.split(".")) & _PEFT_PARTS:
            continue
        attn, mlp = getattr(m, "self_attn", None), getattr(m, "mlp", None)
        if attn is not None and all(hasattr(attn, p) for p in ("q_proj", "k_proj", "v_proj", "o_proj")):
            sets.append(_attention_groups(f"{name}.self_attn", attn, config))
        if mlp is not None and hasattr(mlp, "down_proj"):
            sets.append(_mlp_groups(f"{name}.mlp", mlp))
    if sets:
        return sets
    names = [n for n in modules if n and not set(n.split(".")) & _PEFT_PARTS]
    for i, name in enumerate(names):
        conv = base_layer(modules[name])
        if not isinstance(conv, nn.Conv2d) or conv.groups != 1:
            continue
        n = conv.out_channels
        members = [Member(name, 0, _contiguous(n, 1))]
        nxt = next((c for c in names[i + 1:] if not c.startswith(name + ".")), None)
        if nxt is not None and isinstance(modules[nxt], nn.BatchNorm2d) and modules[nxt].num_features == n:
            members.append(Member(nxt, 0, _contiguous(n, 1), kind="bn"))
        sets.append(GroupSet(name, "conv", n, members))
    if not sets:
        raise ConfigError("no prunable structure found: expected decoder layers with self_attn (q/k/v/o_proj) and "
                          "mlp (down_proj), or nn.Conv2d layers")
    return sets


# ----------------------------------------------------------------------------- soft masks
def expand_mask(member: Member, keep: torch.Tensor, size: int) -> torch.Tensor:
    """Per-channel 0/1 float mask ``[size]`` of one member from a group keep mask ``[n_groups]``."""
    out = torch.ones(size)
    dropped = member.index[~keep.bool().cpu()].flatten()
    out[dropped] = 0.0
    return out


class _MaskHook:
    """Multiplies a module's output channels (``dim=0``) or input features (``dim=1``) by a mask."""

    def __init__(self, masks: "GroupMasks", key: str, member: Member, channels_first: bool) -> None:
        self.masks, self.key, self.member = masks, key, member
        self.channels_first = channels_first  # conv / batch-norm maps [b, c, h, w]; linear [..., c]
        self._cache: tuple[int, torch.Tensor] | None = None

    def factor(self, x: torch.Tensor) -> torch.Tensor:
        channel_dim = 1 if self.channels_first else x.dim() - 1
        version = self.masks.version
        stale = self._cache is None or self._cache[0] != version
        # a factor made under torch.inference_mode (an evaluation pass) cannot enter a training graph
        if stale or (self._cache[1].is_inference() and not torch.is_inference_mode_enabled()):
            self._cache = (version, expand_mask(self.member, self.masks.keep[self.key], x.shape[channel_dim]))
        f = self._cache[1].to(device=x.device, dtype=x.dtype)
        if self.channels_first:  # [1, c, 1, ...] for [b, c, h, w]
            return f.view(1, -1, *([1] * (x.dim() - 2)))
        return f  # broadcasts over the last dim [..., c]

    def forward_hook(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        return output * self.factor(output)

    def pre_hook(self, module: nn.Module, args: tuple) -> tuple:
        x = args[0]
        return (x * self.factor(x), *args[1:])


class GroupMasks:
    """Soft group masks (``True`` = kept) enforced by forward hooks on the member modules.

    Args:
        groups: The group sets (from :func:`discover_groups`).
        keep: Optional initial keep masks by group-set key; default all kept.
    """

    def __init__(self, groups: list[GroupSet], keep: dict[str, torch.Tensor] | None = None) -> None:
        self.groups = {g.key: g for g in groups}
        self.keep = {g.key: torch.ones(g.n_groups, dtype=torch.bool) for g in groups}
        for key, value in (keep or {}).items():
            self.set(key, value)
        self.version = 0
        self._handles: list[Any] = []

    def set(self, key: str, keep: torch.Tensor) -> None:
        """Replace the keep mask ``[n_groups]`` of group set ``key``."""
        if key not in self.keep:
            raise ConfigError(f"unknown group set '{key}'; known: {list(self.keep)[:6]}...")
        keep = torch.as_tensor(keep, dtype=torch.bool).cpu()
        if keep.shape != self.keep[key].shape:
            raise ConfigError(f"keep mask for '{key}' has shape {tuple(keep.shape)}, expected {tuple(self.keep[key].shape)}")
        self.keep[key] = keep.clone()
        self.version = getattr(self, "version", 0) + 1

    def pruned(self) -> dict[str, list[int]]:
        """Indices of the pruned groups per set."""
        return {k: (~v).nonzero().flatten().tolist() for k, v in self.keep.items()}

    def state(self) -> dict[str, torch.Tensor]:
        """A copy of all keep masks (for undo)."""
        return {k: v.clone() for k, v in self.keep.items()}

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        """Restore keep masks saved with :meth:`state`."""
        for key, value in state.items():
            self.set(key, value)

    def rebind(self, model: nn.Module) -> "GroupMasks":
        """New masks with the same keep state for ``model`` after ``merge_and_unload()``.

        Merging replaces the PEFT layers (and their hooks) and drops the ``base_model.model.``
        prefix; groups are re-discovered on ``model`` and matched by key suffix. The old hooks
        are removed and the new masks are attached.
        """
        groups = discover_groups(model)
        keep = {}
        for g in groups:
            match = [k for k in self.keep if k == g.key or k.endswith("." + g.key)]
            if len(match) != 1:
                raise ConfigError(f"cannot match group set '{g.key}' to the old masks ({len(match)} candidates)")
            keep[g.key] = self.keep[match[0]]
        self.detach()
        return GroupMasks(groups, keep).attach(model)

    def attach(self, model: nn.Module) -> "GroupMasks":
        """Register the hooks on ``model`` (the model the groups were discovered on)."""
        self.detach()
        modules = dict(model.named_modules())
        for key, gs in self.groups.items():
            for member in gs.members:
                if member.name not in modules:
                    raise ConfigError(f"module '{member.name}' not found; were the groups discovered on another model?")
                module = modules[member.name]
                channels_first = isinstance(base_layer(module), _CHANNELS_FIRST)
                hook = _MaskHook(self, key, member, channels_first)
                if member.dim == 0:
                    self._handles.append(module.register_forward_hook(hook.forward_hook))
                else:
                    self._handles.append(module.register_forward_pre_hook(hook.pre_hook))
        return self

    def detach(self) -> None:
        """Remove the hooks (the model runs unmasked again)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def sparsity(self) -> float:
        """Fraction of pruned groups over all group sets."""
        total = sum(v.numel() for v in self.keep.values())
        return sum(int((~v).sum()) for v in self.keep.values()) / max(total, 1)


# ----------------------------------------------------------------------------- physical removal
def _slice_module(module: nn.Module, dim: int, idx: torch.Tensor) -> None:
    w = module.weight
    with torch.no_grad():
        module.weight = nn.Parameter(w.index_select(dim, idx.to(w.device)).clone(), requires_grad=w.requires_grad)
        if dim == 0 and getattr(module, "bias", None) is not None:
            b = module.bias
            module.bias = nn.Parameter(b.index_select(0, idx.to(b.device)).clone(), requires_grad=b.requires_grad)
    if isinstance(module, nn.Linear):
        module.in_features, module.out_features = module.weight.shape[1], module.weight.shape[0]


def remove_pruned_groups(model: nn.Module, masks: GroupMasks, *, allow_nonuniform: bool = False) -> dict[str, Any]:
    """Physically remove the pruned groups of an HF decoder (smaller matrices, fewer heads).

    The masks' hooks are detached (the masks are stale afterwards: re-run
    :func:`discover_groups` on the pruned model); the model computes exactly what the soft-masked
    model computed. If every layer keeps the same number of KV groups / MLP channels (always
    true in local mode), ``config.num_attention_heads``, ``num_key_value_heads``,
    ``intermediate_size`` and an explicit ``head_dim`` are updated, so ``save_pretrained`` +
    ``from_pretrained`` reload the pruned model. Per-layer different shapes (global mode,
    protected layers) run, but a standard HF config cannot describe them, so they are refused
    unless ``allow_nonuniform=True``; then the config is left unchanged and ``uniform`` is False
    in the report: save such a model with
    :func:`obliviate.pipelines.prune_llm.save_pruned` (zero-padded to uniform widths, see
    :mod:`obliviate.pruning.physical_llm`), not with a bare ``save_pretrained``.

    Args:
        model: The (unwrapped, LoRA-merged) HF causal LM the groups were discovered on.
        masks: Keep masks; every set must keep at least one group.
        allow_nonuniform: Accept per-layer different widths (global ranking, protected layers).

    Returns:
        ``{"params_before", "params_after", "uniform", "per_layer": {key: kept}}``.

    Raises:
        ConfigError: A member is still a PEFT LoRA layer (merge first), a set would keep no
            group, layers would differ in width without ``allow_nonuniform``, or the groups
            are CNN channels (use physical_cnn.remove_conv_channels).
    """
    widths: dict[str, set[int]] = {}
    for key, gs in masks.groups.items():
        widths.setdefault(gs.kind, set()).add(int(masks.keep[key].sum()))
    if not allow_nonuniform and any(len(v) > 1 for v in widths.values()):
        raise ConfigError(f"layers would keep different numbers of groups ({widths}), which a standard HF config cannot "
                          "describe (save_pretrained + from_pretrained would fail); prune in local mode, or pass "
                          "allow_nonuniform=True and save with obliviate.pipelines.prune_llm.save_pruned (zero-padded)")
    modules = dict(model.named_modules())
    before = sum(p.numel() for p in model.parameters())
    kept: dict[str, int] = {}
    for key, gs in masks.groups.items():
        if gs.kind == "conv":
            raise ConfigError("remove_pruned_groups is for HF decoders; remove CNN channels with "
                              "obliviate.pruning.physical_cnn.remove_conv_channels(model, masks)")
        keep = masks.keep[key]
        if not bool(keep.any()):
            raise ConfigError(f"group set '{key}' would keep no group; lower the pruning ratio")
        for member in gs.members:
            if hasattr(modules[member.name], "base_layer"):
                raise ConfigError(f"'{member.name}' is an unmerged LoRA layer; call model = model.merge_and_unload() "
                                  "before removing pruned groups")
        for member in gs.members:
            _slice_module(modules[member.name], member.dim, member.index[keep].flatten().sort().values)
        kept[key] = int(keep.sum())
        if gs.kind == "attention":
            attn = modules[key]
            if hasattr(attn, "num_heads"):
                attn.num_heads = kept[key] * gs.info["n_rep"]
            if hasattr(attn, "num_key_value_heads"):
                attn.num_key_value_heads = kept[key]
    masks.detach()
    config = _model_config(model)
    by_kind: dict[str, set[int]] = {}
    for key, n in kept.items():
        by_kind.setdefault(masks.groups[key].kind, set()).add(n)
    uniform = all(len(v) == 1 for v in by_kind.values())
    if config is not None and uniform:
        if "attention" in by_kind:
            gs = next(g for g in masks.groups.values() if g.kind == "attention")
            n_kv = by_kind["attention"].pop()
            config.head_dim = gs.info["head_dim"]  # explicit: hidden_size // heads no longer holds
            config.num_key_value_heads = n_kv
            config.num_attention_heads = n_kv * gs.info["n_rep"]
        if "mlp" in by_kind:
            config.intermediate_size = by_kind["mlp"].pop()
    after = sum(p.numel() for p in model.parameters())
    return {"params_before": before, "params_after": after, "uniform": uniform, "per_layer": kept}
