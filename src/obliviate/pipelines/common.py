"""Plumbing shared by the jobs: run directories, training arguments, method presets."""

from __future__ import annotations

import json
import logging
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from transformers import TrainingArguments

from obliviate.errors import ConfigError
from obliviate.io import atomic_write_text

log = logging.getLogger(__name__)

TRAINING_DEFAULTS: dict[str, Any] = {
    "report_to": "none",
    "save_strategy": "no",
    "logging_strategy": "steps",
    "logging_steps": 50,
    "dataloader_pin_memory": False,
    "disable_tqdm": False,
}


def plain(node: Any) -> Any:
    """A config node as plain Python containers (resolved); anything else as it is."""
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


def training_arguments(args: dict[str, Any] | DictConfig, output_dir: str | Path, seed: int, n_train: int | None = None) -> TrainingArguments:
    """Build ``TrainingArguments`` from a config block; unknown keys fail with a clear message.

    Besides the ``TrainingArguments`` fields, the block may hold ``warmup_epochs`` (as in the
    reference framework): warm-up over that many epochs, i.e. ``warmup_steps =
    int(warmup_epochs · n_train // (per_device_train_batch_size · gradient_accumulation_steps
    · world size))``; it then replaces ``warmup_steps`` (``warmup_epochs: 0`` keeps
    ``warmup_steps``). Half precision (``bf16``/``fp16``) is switched off without a GPU, and a
    ``paged_*`` optimizer (bitsandbytes) becomes ``adamw_torch`` (the same AdamW update)
    without a GPU or without the bitsandbytes package; each is logged.

    Args:
        args: The ``trainer.args`` / ``train.args`` block.
        output_dir: The Trainer's output directory.
        seed: Default ``seed`` (the block may override it).
        n_train: Number of training samples per epoch (``len(train_dataset)``); needed when
            ``warmup_epochs`` > 0.
    """
    from obliviate.distributed import training_defaults, world_size

    raw = OmegaConf.to_container(args, resolve=True) if isinstance(args, DictConfig) else dict(args or {})
    merged = {**TRAINING_DEFAULTS, **training_defaults(), "seed": seed, **raw, "output_dir": str(output_dir)}
    check_report_to(merged.get("report_to"))
    _hardware_fallbacks(merged)
    warmup_epochs = float(merged.pop("warmup_epochs", 0) or 0)
    if warmup_epochs > 0:
        if n_train is None:
            raise ConfigError("trainer.args.warmup_epochs needs the training-set size here; set warmup_epochs=0 and use warmup_steps")
        per_step = int(merged.get("per_device_train_batch_size", 8)) * int(merged.get("gradient_accumulation_steps", 1)) * world_size()
        steps = int((warmup_epochs * int(n_train)) // per_step)
        if merged.get("warmup_steps"):
            log.warning("warmup_epochs=%g replaces warmup_steps=%s (set warmup_epochs=0 to use warmup_steps)", warmup_epochs, merged["warmup_steps"])
        merged["warmup_steps"] = steps
    try:
        return TrainingArguments(**merged)
    except TypeError as exc:
        raise ConfigError(f"invalid trainer.args: {exc}; see transformers.TrainingArguments for valid keys") from None
    except ValueError as exc:
        raise ConfigError(f"invalid trainer.args: {exc}") from None


def _hardware_fallbacks(args: dict[str, Any]) -> None:
    """Switch off what this machine cannot run: half precision without a GPU, bitsandbytes'
    paged optimizers without a GPU or the package (in place, logged)."""
    import importlib.util

    import torch

    cuda = torch.cuda.is_available()
    if not cuda:
        for flag in ("bf16", "fp16", "bf16_full_eval", "fp16_full_eval"):
            if args.get(flag):
                log.info("no GPU: ignoring trainer args %s=true", flag)
                args[flag] = False
    optim = str(args.get("optim", ""))
    if optim.startswith("paged_") and not (cuda and importlib.util.find_spec("bitsandbytes") is not None):
        log.info("optim %s needs a GPU and the bitsandbytes package: using adamw_torch (the same AdamW update)", optim)
        args["optim"] = "adamw_torch"


def check_report_to(report_to: Any) -> None:
    """Fail early, in one line, when a ``report_to`` logger is not installed (W&B runs offline
    unless ``WANDB_MODE`` is set)."""
    import importlib.util
    import os

    names = [report_to] if isinstance(report_to, str) else list(report_to or [])
    for name, module in (("tensorboard", "tensorboard"), ("wandb", "wandb")):
        if name in names:
            if importlib.util.find_spec(module) is None:
                from obliviate.errors import MissingDependencyError
                from obliviate.extras import missing_message

                raise MissingDependencyError(missing_message(module))
            if name == "wandb":
                os.environ.setdefault("WANDB_MODE", "offline")


def apply_method_preset(cfg: DictConfig, presets: DictConfig | None, handler: str, user_overrides: list[str]) -> DictConfig:
    """Merge an experiment's tuned ``presets[handler]`` into ``cfg.trainer``.

    A preset never overrides a value the user set on the command line (``trainer.x=...``).
    """
    if not presets or handler not in presets:
        return cfg
    preset = OmegaConf.to_container(presets[handler], resolve=True)
    user_keys = {o.split("=", 1)[0].lstrip("+~") for o in user_overrides}

    def walk(node: dict, prefix: str) -> None:
        for key, value in node.items():
            dotted = f"{prefix}.{key}"
            if isinstance(value, dict):
                walk(value, dotted)
            elif dotted not in user_keys:
                OmegaConf.update(cfg, dotted, value, force_add=True, merge=True)

    walk(preset, "trainer")
    return cfg


def write_config(cfg: DictConfig, run_dir: Path) -> None:
    """Write the resolved config to ``run_dir/config.yaml`` atomically."""
    atomic_write_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))


@contextmanager
def timer() -> Any:
    """``with timer() as t: ...; t["s"]`` gives elapsed wall-clock seconds."""
    out = {"s": 0.0}
    start = time.perf_counter()
    try:
        yield out
    finally:
        out["s"] = time.perf_counter() - start


def forget_selection(cfg: DictConfig) -> dict[str, Any]:
    """The forget-selection keys of a config (``forget_class`` etc.)."""
    keys = ("forget_class", "forget_count", "forget_fraction", "forget_index_file")
    sel = {k: cfg.get(k) for k in keys if cfg.get(k) is not None}
    if "forget_class" in sel and OmegaConf.is_list(sel["forget_class"]):
        sel["forget_class"] = list(sel["forget_class"])
    return sel


def latest_checkpoint(trainer_dir: str | Path) -> str | None:
    """The complete ``checkpoint-<step>`` folder with the highest step under ``trainer_dir`` (or None).

    The HF Trainer writes ``trainer_state.json`` last, after model, optimizer, scheduler and RNG
    states; a folder without it, or with one that does not parse (a kill while it was being
    written), was cut short and is skipped.
    """
    trainer_dir = Path(trainer_dir)
    if not trainer_dir.is_dir():
        return None
    steps = [(int(p.name.split("-")[-1]), p) for p in trainer_dir.glob("checkpoint-*")
             if p.name.split("-")[-1].isdigit() and _complete_state(p / "trainer_state.json")]
    return str(max(steps)[1]) if steps else None


def _complete_state(path: Path) -> bool:
    """Whether ``path`` (a checkpoint's trainer_state.json) exists and parses as a JSON object."""
    try:
        return isinstance(json.loads(path.read_text()), dict)
    except (OSError, ValueError):
        return False
