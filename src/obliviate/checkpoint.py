"""Safe model checkpoints: safetensors by default, ``torch.load(weights_only=True)`` otherwise."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from obliviate.errors import ConfigError
from obliviate.io import atomic_write_bytes


def save_model(model: nn.Module, path: str | os.PathLike, state_dict: dict[str, torch.Tensor] | None = None) -> Path:
    """Save ``model.state_dict()`` as safetensors, atomically.

    A model sharded by FSDP needs ``state_dict``: its full state, gathered on every rank with
    :func:`obliviate.distributed.full_state_dict` (a collective) before rank 0 saves; in a
    one-process group it is gathered here.
    """
    from safetensors.torch import save

    from obliviate.distributed import state_dict_to_save

    state = state_dict_to_save(model, state_dict)
    state = {k: v.detach().contiguous().cpu() for k, v in (model.state_dict() if state is None else state).items()}
    return atomic_write_bytes(path, save(state))


def load_state(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load a state dict from ``.safetensors`` or (safely) from a torch file."""
    path = Path(path)
    if path.is_dir():
        for name in ("model.safetensors", "pytorch_model.bin"):
            if (path / name).is_file():
                path = path / name
                break
    if not path.is_file():
        raise ConfigError(f"checkpoint '{path}' does not exist; give a .safetensors file or a run's model directory")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling refused or corrupt file
        raise ConfigError(f"checkpoint '{path}' could not be loaded safely ({type(exc).__name__}); convert it to safetensors") from None
    return state.get("state_dict", state) if isinstance(state, dict) else state


def load_model(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load weights from ``path`` into ``model``; a mismatch names the offending keys.

    A checkpoint of a CNN whose pruned channels were removed physically
    (:func:`obliviate.pruning.physical_cnn.save_physical`) carries its module sizes: the
    freshly built full-size ``model`` is shrunk to them first (in place).
    """
    from obliviate.pruning.physical_cnn import read_shapes, shrink_to

    shapes = read_shapes(path)
    if shapes:  # shrunk on the CPU (its index tensors live there), then back where the model was placed
        device = next(model.parameters()).device
        shrink_to(model.cpu(), shapes).to(device)
    state = load_state(path)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ConfigError(
            f"checkpoint '{path}' does not fit the configured model: missing {list(missing)[:3]}, "
            f"unexpected {list(unexpected)[:3]}; check model=... and its options"
        )
    return model
