"""Multi-process helpers: which process writes results.

Under ``accelerate launch`` or ``torchrun`` every process runs the whole job (data, reference
models, evaluation); the HF Trainer (through accelerate) shards the training batches and
synchronises gradients. Results, checkpoints and the manifest are written by the main process
(global rank 0) only. The rank is read from the launcher's environment (``RANK``), which is
set before any process group exists, and from accelerate's ``PartialState`` once it does.
"""

from __future__ import annotations

import os


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
