"""Plumbing shared by the jobs: run directories, training arguments, method presets."""

from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from transformers import TrainingArguments

from obliviate.errors import ConfigError
from obliviate.io import atomic_write_text

TRAINING_DEFAULTS: dict[str, Any] = {
    "report_to": "none",
    "save_strategy": "no",
    "logging_strategy": "steps",
    "logging_steps": 50,
    "dataloader_pin_memory": False,
    "disable_tqdm": False,
}


def training_arguments(args: dict[str, Any] | DictConfig, output_dir: str | Path, seed: int) -> TrainingArguments:
    """Build ``TrainingArguments`` from a config block; unknown keys fail with a clear message."""
    from obliviate.distributed import training_defaults

    raw = OmegaConf.to_container(args, resolve=True) if isinstance(args, DictConfig) else dict(args or {})
    merged = {**TRAINING_DEFAULTS, **training_defaults(), "seed": seed, **raw, "output_dir": str(output_dir)}
    check_report_to(merged.get("report_to"))
    try:
        return TrainingArguments(**merged)
    except TypeError as exc:
        raise ConfigError(f"invalid trainer.args: {exc}; see transformers.TrainingArguments for valid keys") from None
    except ValueError as exc:
        raise ConfigError(f"invalid trainer.args: {exc}") from None


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
    states; a folder without it was cut short by a kill and is skipped.
    """
    trainer_dir = Path(trainer_dir)
    if not trainer_dir.is_dir():
        return None
    steps = [(int(p.name.split("-")[-1]), p) for p in trainer_dir.glob("checkpoint-*")
             if p.name.split("-")[-1].isdigit() and (p / "trainer_state.json").is_file()]
    return str(max(steps)[1]) if steps else None
