"""Run bookkeeping: ``manifest.json``, run status, and the never-overwrite rule.

A run directory gets a manifest at start (status ``running``) that is rewritten atomically
when the run ends: ``completed``, ``diverged``, ``failed`` or ``interrupted``. It records
package versions, the seed, a hash of the resolved config, hashes of the data files, the
model source and start/end times.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import platform
import signal
import sys
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from obliviate.console import interrupt_handler
from obliviate.distributed import is_main_process
from obliviate.errors import ConfigError
from obliviate.io import atomic_write_json, atomic_write_text, read_json

PACKAGES = ("obliviate", "torch", "torchvision", "transformers", "accelerate", "peft", "timm", "datasets", "hydra-core", "scikit-learn", "numpy")


def package_versions() -> dict[str, str | None]:
    """Installed versions of the packages a result depends on."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def config_hash(cfg: DictConfig) -> str:
    """SHA-256 of the resolved config without its output paths (same experiment = same hash)."""
    data = OmegaConf.to_container(cfg, resolve=True)
    data.pop("paths", None)
    data.pop("hydra", None)
    return hashlib.sha256(OmegaConf.to_yaml(OmegaConf.create(data)).encode()).hexdigest()


def git_sha() -> str | None:
    """The git commit of the obliviate source tree, when it is a checkout."""
    import subprocess

    try:
        root = Path(__file__).resolve().parents[2]
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None
    except Exception:
        return None


class Run:
    """Context manager around one job: manifest at start, final status at exit.

    Args:
        run_dir: The run directory.
        cfg: The resolved config.
        command: CLI command name (train, unlearn, ...).
        overwrite: Allow re-running into a directory that holds a completed run.
        resume: Continue an unfinished run (also allowed on a completed one: nothing to redo
            is then recomputed cheaply from saved models).

    Example:
        with Run(run_dir, cfg, "unlearn") as run:
            run.data_files["train"] = "…"
            ...; run.status = "diverged"  # otherwise "completed" on a clean exit
    """

    def __init__(self, run_dir: Path, cfg: DictConfig, command: str, *, overwrite: bool = False, resume: bool = False) -> None:
        self.run_dir, self.cfg, self.command = Path(run_dir), cfg, command
        self.path = self.run_dir / "manifest.json"
        self.status: str = "completed"
        self.data: dict[str, Any] = {}
        self.data_files: dict[str, str] = {}
        if self.path.is_file() and not (overwrite or resume):
            previous = read_json(self.path).get("status")
            if previous == "completed":
                raise ConfigError(
                    f"'{self.run_dir}' already holds a completed {command} run; pass overwrite=true to replace it, "
                    "resume=true to continue it, or choose another paths.output_dir (left unset, every run gets a new folder)"
                )

    def _hashed_files(self) -> dict[str, dict[str, str]]:
        out = {}
        for key, value in self.data_files.items():
            path = Path(value)
            if path.is_dir() and (path / "model.safetensors").is_file():
                path = path / "model.safetensors"
            out[key] = {"path": str(path), "sha256": file_sha256(path)} if path.is_file() else {"path": str(path)}
        return out

    def _write(self, status: str) -> None:
        if not is_main_process():  # accelerate/torchrun: rank 0 owns the manifest
            return
        manifest = {
            "command": self.command,
            "status": status,
            "seed": self.cfg.get("seed"),
            "config_sha256": config_hash(self.cfg),
            "model_source": _model_source(self.cfg),
            "data_files": self._hashed_files(),
            "versions": package_versions(),
            "git_sha": git_sha(),
            "argv": sys.argv,
            "started_at": self.started,
            "ended_at": None if status == "running" else time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            **self.data,
        }
        atomic_write_json(self.path, manifest)

    def __enter__(self) -> "Run":
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        self._previous_sigterm = signal.getsignal(signal.SIGTERM)
        signal.signal(signal.SIGTERM, interrupt_handler)
        if is_main_process():
            atomic_write_text(self.run_dir / "config.yaml", OmegaConf.to_yaml(self.cfg, resolve=True))
        self._write("running")
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        signal.signal(signal.SIGTERM, self._previous_sigterm)
        if exc_type is None:
            status = self.status
        elif issubclass(exc_type, KeyboardInterrupt):
            status = "interrupted"
        else:
            status = "failed"
            self.data["error"] = f"{exc_type.__name__}: {exc}"
        self._write(status)
        return False


def _model_source(cfg: DictConfig) -> Any:
    model = cfg.get("model")
    if model is None:
        return None
    if model.get("model_args") is not None:
        return OmegaConf.to_container(model.model_args, resolve=True)
    return {k: v for k, v in OmegaConf.to_container(model, resolve=True).items() if k != "track"}
