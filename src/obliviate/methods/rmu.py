"""RMU (representation misdirection): steer forget activations at one layer to a random vector.

Loss::

    γ · D(h_ℓ(x_f), c·u) + α · D(h_ℓ(x_r), h_ℓ^ref(x_r))

``h_ℓ`` is the output of decoder block ``ℓ`` (0-based; ``= hidden_states[ℓ+1]`` of
``output_hidden_states`` for every block but the last, whose hidden state HF reports after the
final norm), captured by a forward hook. ``u`` is a fixed random unit vector (uniform entries,
normalised; seeded by ``vector_seed`` here, drawn from the global RNG in the reference
implementations), ``c`` the steering coefficient. ``D`` is the squared distance as in the
reference implementations: mean over the hidden dimension of the squared difference
(``||·||²/d``), averaged per sequence over the selected tokens (answer tokens, or every
non-padding token with ``tokens="all"``), then over the batch. With
``retain_loss_type="NLL"`` the retain term is the retain NLL and no reference model is built.

Defaults are the reference framework's ``RMU.yaml`` (layer 7, c = 2, α = γ = 1,
``EMBED_DIFF``) with every parameter trainable (``trainable="all"``; blocks above ℓ and the LM
head get no gradient). ``trainable="wmdp"`` trains only the MLP down-projection weight of
blocks ℓ-2, ℓ-1, ℓ (the WMDP authors' choice: ``model.layers.(5|6|7).mlp.down_proj.weight``);
``trainable="layers"`` the parameters matching ``param_regex`` (default: the whole MLP) of
``trainable_layers``. :meth:`RMU.setup` sets ``requires_grad=False`` on every other parameter
(the optimizer, created after setup, never sees them). The decoder blocks are discovered, not
hard-coded: the ``nn.ModuleList`` of ``config.num_hidden_layers`` identical blocks
(``model.layers`` for Llama/Qwen/Mistral/Phi, ``transformer.h`` for GPT-2,
``gpt_neox.layers``, ``model.decoder.layers`` for OPT, also under a PEFT wrapper). The forward
stops right after block ``ℓ`` (the hook raises), so the upper blocks and the LM head are never
run, except under ``DistributedDataParallel`` where the full forward runs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from obliviate.errors import ConfigError
from obliviate.methods import METHODS
from obliviate.methods._common import check_choice, check_positive, check_reduction, nll_term
from obliviate.methods._losses import activation_mse
from obliviate.methods.base import UnlearningMethod


TRAINABLE = ("all", "wmdp", "layers")
# The MLP down-projection weight inside a decoder block: Llama/Qwen/Mistral (mlp.down_proj),
# Phi (mlp.fc2), GPT-2 (mlp.c_proj), NeoX (mlp.dense_4h_to_h), OPT (fc2).
WMDP_REGEX = re.compile(r"(^|\.)(mlp\.(down_proj|fc2|c_proj|dense_4h_to_h)|fc2)\.weight$")


@dataclass
class RMUConfig:
    """Arguments of RMU.

    Attributes:
        layer: Decoder block ℓ whose output is steered (0-based; negative counts from the end).
        trainable: Which parameters train: "all" (every parameter, the reference framework's
            TOFU config), "wmdp" (the MLP down-projection weight of blocks ℓ-2..ℓ, the WMDP
            authors' choice) or "layers" (``param_regex`` parameters of ``trainable_layers``).
        trainable_layers: With ``trainable="layers"``: the blocks trained; None =
            ``[ℓ-2, ℓ-1, ℓ]`` (the ones that exist).
        param_regex: With ``trainable="layers"``: regex searched in parameter names *inside a
            block* (default: the MLP of Llama/Qwen/Mistral/Phi/GPT-2/NeoX/OPT blocks).
        steering_coeff: Steering coefficient c (scale of the target ``c·u``).
        alpha: Weight of the retain term.
        gamma: Weight of the forget (steering) term.
        retain_loss_type: "EMBED_DIFF" (activation distance to the reference at layer ℓ) or
            "NLL" (retain NLL; no reference model).
        tokens: "answer" (tokens with a label) or "all" (every non-padding token).
        vector_seed: Seed of the random direction u.
        reduction: Of the retain NLL (``retain_loss_type="NLL"``): "token" (over all answer
            tokens of the batch, as the reference framework) or "sequence".
    """

    layer: int = 7
    trainable: str = "all"
    trainable_layers: list[int] | None = None
    param_regex: str = r"(^|\.)(mlp|feed_forward|ffn|fc1|fc2)(\.|$)"
    steering_coeff: float = 2.0
    alpha: float = 1.0
    gamma: float = 1.0
    retain_loss_type: str = "EMBED_DIFF"
    tokens: str = "answer"
    vector_seed: int = 0
    reduction: str = "token"


def find_decoder_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The ``(name, ModuleList)`` of the decoder blocks of any HF causal LM.

    Picks the ``nn.ModuleList`` of identical modules whose length is
    ``config.num_hidden_layers`` (largest by parameter count if several), else the longest
    such list.

    Raises:
        ConfigError: No list of identical blocks exists.
    """
    n_layers = None
    for obj in (model, getattr(model, "base_model", None), getattr(getattr(model, "base_model", None), "model", None)):
        cfg = getattr(obj, "config", None)
        if cfg is not None and getattr(cfg, "num_hidden_layers", None):
            n_layers = int(cfg.num_hidden_layers)
            break
    candidates = []
    for name, mod in model.named_modules():
        if isinstance(mod, nn.ModuleList) and len(mod) > 0 and len({type(m) for m in mod}) == 1:
            size = sum(p.numel() for p in mod.parameters())
            candidates.append((len(mod) == n_layers, size if len(mod) == n_layers else len(mod), name, mod))
    if not candidates:
        raise ConfigError(f"RMU: found no list of decoder blocks in {type(model).__name__}")
    _, _, name, layers = max(candidates, key=lambda c: (c[0], c[1]))
    return name, layers


class _Stop(Exception):
    """Raised by the capture hook to end a forward pass early."""


def layer_output(model: nn.Module, layer: nn.Module, batch: dict[str, Any], early_exit: bool = True) -> torch.Tensor:
    """Output ``[b, s, d]`` of ``layer`` when ``model`` runs on ``batch``."""
    store: dict[str, torch.Tensor] = {}

    def hook(_mod: nn.Module, _inp: Any, out: Any) -> None:
        store["h"] = out[0] if isinstance(out, (tuple, list)) else out
        if early_exit:
            raise _Stop

    handle = layer.register_forward_hook(hook)
    try:
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    except _Stop:
        pass
    finally:
        handle.remove()
    return store["h"]


@METHODS.register("RMU", tracks=("llm",))
class RMU(UnlearningMethod):
    """Steer layer-ℓ forget activations to ``c·u``, keep retain activations at the reference's."""

    Config = RMUConfig

    def __init__(self, config: RMUConfig | None = None) -> None:
        super().__init__(config)
        check_choice("RMU", "retain_loss_type", self.cfg.retain_loss_type, ("EMBED_DIFF", "NLL"))
        check_choice("RMU", "tokens", self.cfg.tokens, ("answer", "all"))
        check_choice("RMU", "trainable", self.cfg.trainable, TRAINABLE)
        check_reduction("RMU", self.cfg.reduction)
        if self.cfg.trainable_layers is not None and self.cfg.trainable != "layers":
            raise ConfigError(f"RMU trainable_layers needs trainable=layers (got trainable={self.cfg.trainable})")
        check_positive("RMU", "steering_coeff", self.cfg.steering_coeff)
        check_positive("RMU", "alpha", self.cfg.alpha, allow_zero=True)
        try:
            self._regex = re.compile(self.cfg.param_regex)
        except re.error as exc:
            raise ConfigError(f"RMU param_regex '{self.cfg.param_regex}' is not a valid regex: {exc}") from None
        self.needs_reference = self.cfg.retain_loss_type == "EMBED_DIFF"
        self.layer_index: int | None = None
        self.trained_names: list[str] = []
        self._u: torch.Tensor | None = None

    # ------------------------------------------------------------------ setup
    def _resolve(self, n_layers: int) -> tuple[int, list[int]]:
        layer = self.cfg.layer + n_layers if self.cfg.layer < 0 else self.cfg.layer
        if not 0 <= layer < n_layers:
            raise ConfigError(f"RMU layer {self.cfg.layer} is out of range: the model has {n_layers} decoder blocks")
        ids = self.cfg.trainable_layers if self.cfg.trainable == "layers" else None
        if ids is None:
            ids = [i for i in (layer - 2, layer - 1, layer) if i >= 0]
        ids = [i + n_layers if i < 0 else i for i in ids]
        bad = [i for i in ids if not 0 <= i < n_layers]
        if bad or not ids:
            raise ConfigError(f"RMU trainable_layers {self.cfg.trainable_layers} must be non-empty block indices < {n_layers}")
        if max(ids) > layer:
            raise ConfigError(f"RMU trainable_layers {ids} include blocks above layer {layer}: they cannot change h_{layer}")
        return layer, sorted(set(ids))

    def setup(self, model, ctx):
        _, layers = find_decoder_layers(model)
        self.layer_index, train_ids = self._resolve(len(layers))
        self._layer = layers[self.layer_index]
        self._ref_layer = find_decoder_layers(ctx.ref_model)[1][self.layer_index] if ctx.ref_model is not None else None
        if self.cfg.trainable == "all":  # every parameter stays as it is (those above ℓ get no gradient)
            self.trained_names = [name for name, p in model.named_parameters() if p.requires_grad]
            return
        regex = self._regex if self.cfg.trainable == "layers" else WMDP_REGEX
        selected: set[int] = set()
        for i in train_ids:
            for name, p in layers[i].named_parameters():
                if p.requires_grad and regex.search(name):
                    selected.add(id(p))
        if not selected:
            what = "param_regex" if regex is self._regex else "the MLP down-projection pattern"
            raise ConfigError(f"RMU: no trainable parameter of blocks {train_ids} matches {what} '{regex.pattern}'")
        self.trained_names = []
        for name, p in model.named_parameters():
            keep = id(p) in selected
            p.requires_grad_(keep)
            if keep:
                self.trained_names.append(name)

    def control_vector(self, dim: int, device: torch.device) -> torch.Tensor:
        """``c·u`` ``[d]``: u uniform in [0, 1)^d normalised to unit length, seeded."""
        if self._u is None or self._u.shape[0] != dim:
            u = torch.rand(dim, generator=torch.Generator().manual_seed(int(self.cfg.vector_seed)))
            self._u = u / u.norm()
        return (self.cfg.steering_coeff * self._u).to(device)

    def _mask(self, batch: dict[str, Any]) -> torch.Tensor:
        if self.cfg.tokens == "all":
            return batch["attention_mask"].bool()
        return batch["labels"] != -100

    # ------------------------------------------------------------------ loss
    def loss(self, model, batch, ctx):
        if self.layer_index is None:
            self.setup(model, ctx)
        early = not isinstance(model, nn.parallel.DistributedDataParallel)
        forget, retain = batch["forget"], batch["retain"]
        h_f = layer_output(model, self._layer, forget, early)  # [b, s, d]
        target = self.control_vector(h_f.shape[-1], h_f.device)  # [d]
        f_loss = activation_mse(h_f, target, self._mask(forget))
        if self.cfg.retain_loss_type == "EMBED_DIFF":
            h_r = layer_output(model, self._layer, retain, early)
            with torch.no_grad():
                h_r_ref = layer_output(ctx.ref_model, self._ref_layer, retain, True)
            r_loss = activation_mse(h_r, h_r_ref.to(h_r.device), self._mask(retain))
        else:
            r_loss = nll_term(model, retain, ctx, self.cfg.reduction)
        loss = self.cfg.gamma * f_loss + self.cfg.alpha * r_loss
        return loss, {"forget_loss": f_loss.item(), "retain_loss": r_loss.item()}
