"""Multi-process helpers: which process writes results, where a model is placed, how a sharded
(FSDP) model's full state is gathered for saving.

Under ``accelerate launch`` or ``torchrun`` every process runs the whole job (data, reference
models, evaluation); the HF Trainer (through accelerate) shards the training batches and
synchronises gradients. Results, checkpoints and the manifest are written by the main process
(global rank 0) only. The rank is read from the launcher's environment (``RANK``), which is
set before any process group exists, and from accelerate's ``PartialState`` once it does.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def world_size() -> int:
    """Number of processes of the job (1 when not launched by a distributed launcher)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def rank() -> int:
    """Global rank of this process (0 when not distributed)."""
    try:
        from accelerate import PartialState

        if PartialState._shared_state and world_size() > 1:
            return int(PartialState().process_index)
    except Exception:  # accelerate missing or not initialised: fall back to the launcher's env
        pass
    return int(os.environ.get("RANK", "0") or 0)


def is_main_process() -> bool:
    """True on the process that writes results (rank 0)."""
    return rank() == 0


def barrier() -> None:
    """Wait for every process (no-op without an initialised process group)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def training_defaults() -> dict[str, bool]:
    """``TrainingArguments`` needed by the launch: ``use_cpu`` for a multi-process run without
    CUDA (``torchrun`` on CPU; ``accelerate launch --cpu`` sets ``ACCELERATE_USE_CPU`` itself),
    otherwise transformers silently trains every process on the whole data set."""
    import torch

    if world_size() > 1 and not torch.cuda.is_available():
        return {"use_cpu": True}
    return {}


def write_json_main(path, obj) -> None:
    """:func:`obliviate.io.atomic_write_json` on the main process only (under accelerate/torchrun
    every rank computes the same results; rank 0 writes them)."""
    from obliviate.io import atomic_write_json

    if is_main_process():
        atomic_write_json(path, obj)


# ----------------------------------------------------------------------------- device placement
def accelerator_device(model) -> torch.device | None:
    """The device to move a freshly loaded ``model`` to, or ``None`` to leave it where it is.

    ``cuda:{LOCAL_RANK or 0}`` when CUDA is available and this is a single-process run
    (``WORLD_SIZE`` unset or 1, not launched by accelerate with FSDP or DeepSpeed, which place
    parameters themselves). ``None`` for a model loaded with a ``device_map``
    (``hf_device_map``) or quantized (bitsandbytes and the like place their own weights).
    The HF Trainer moves a model to the GPU when it trains; a model only evaluated (probes,
    ``obliviate eval``, the tuner's reference objective) would otherwise stay on the CPU.
    """
    import torch

    if not torch.cuda.is_available() or world_size() > 1:
        return None
    if any(os.environ.get(f"ACCELERATE_USE_{k}", "").lower() in ("1", "true") for k in ("FSDP", "DEEPSPEED")):
        return None
    if getattr(model, "hf_device_map", None) is not None:
        return None
    method = quant_method(model)
    # A GGUF checkpoint is dequantised to plain tensors on load (SmolLM2); where a transformers
    # release keeps its gguf quantization_config (models/llm.py's save path handles that too),
    # the model still moves like any model.
    if (method is not None and method != "gguf") or getattr(model, "is_loaded_in_8bit", False) \
            or getattr(model, "is_loaded_in_4bit", False):
        return None
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0") or 0))


def quant_method(model) -> str | None:
    """The lower-cased ``quant_method`` of a Hugging Face model's ``quantization_config``
    (``"gguf"``, ``"bitsandbytes"``, ...), ``"unknown"`` when it has none, ``None`` without one."""
    qc = getattr(getattr(model, "config", None), "quantization_config", None)
    if qc is None:
        return None
    method = qc.get("quant_method") if isinstance(qc, dict) else getattr(qc, "quant_method", None)
    return str(getattr(method, "value", method) or "unknown").lower()


def place_on_accelerator(model, what: str = "model"):
    """Move ``model`` to :func:`accelerator_device` (when it names one) and log the device."""
    import logging

    device = accelerator_device(model)
    if device is not None:
        model = model.to(device)
        logging.getLogger(__name__).info("%s placed on %s", what, device)
    return model


# ----------------------------------------------------------------------------- sharded (FSDP) models
def is_sharded(model) -> bool:
    """True for a model sharded by FSDP2 (``fully_shard``: DTensor parameters) or wrapped, in
    whole or in part, by FSDP1 (``FullyShardedDataParallel``)."""
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # torch built without distributed
        return False
    if any(isinstance(p, DTensor) for p in model.parameters()):
        return True
    from torch.distributed.fsdp import FullyShardedDataParallel

    return any(isinstance(m, FullyShardedDataParallel) for m in model.modules())


def full_state_dict(model) -> dict | None:
    """The full (unsharded) state dict of a sharded model, on the CPU of rank 0; ``None`` for
    a model that is not sharded (save it as it is).

    A COLLECTIVE: every rank must call it, before rank 0 alone writes (a gather run on rank 0
    only would wait for the others forever). Ranks other than 0 get an empty dict.
    """
    if not is_sharded(model):
        return None
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def state_dict_to_save(model, state: dict | None = None) -> dict | None:
    """``state`` if given; else the gathered state of a sharded model in a one-process group
    (no other rank to wait for); else ``None`` (an ordinary model saves its own state).

    Raises:
        RuntimeError: a sharded model in a multi-process group without ``state``: the caller
            must gather with :func:`full_state_dict` on every rank first.
    """
    if state is not None or not is_sharded(model):
        return state
    import torch.distributed as dist

    if dist.is_initialized() and dist.get_world_size() > 1:
        raise RuntimeError("saving a sharded (FSDP) model: gather its state with obliviate.distributed.full_state_dict(model) "
                           "on every rank, then save on rank 0 with that state")
    return full_state_dict(model)
