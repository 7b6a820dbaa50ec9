"""Optuna plumbing shared by ``obliviate sweep`` and ``obliviate tune``.

- Search spaces: ``{dotted config key: {type, low, high, log, step, choices}}`` (validated by
  :func:`parse_space`, sampled by :func:`suggest`, turned into Hydra overrides by
  :func:`as_overrides`).
- Storage: an Optuna storage URL; SQLite gets a long lock timeout so several processes (worker
  processes of one command, or the same command in several shells) share one study.
- Workers: :func:`spawn_workers` starts N processes of the same command and waits for them.
- A file lock (:func:`file_lock`) serialises work that must happen once per output directory
  (training reference models, counting trials before asking for a new one).
"""

from __future__ import annotations

import fcntl
import shlex
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from obliviate.errors import ConfigError, ObliviateError

PARAM_TYPES = ("float", "int", "categorical")


# ----------------------------------------------------------------------------- search space
def flatten_space(node: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"trainer": {"args": {"learning_rate": {type: ...}}}}`` -> ``{"trainer.args.learning_rate": {type: ...}}``.

    A mapping with a ``type`` key is a parameter spec (a leaf); dotted keys pass through.
    """
    out: dict[str, Any] = {}
    for key, value in node.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and "type" not in value:
            out.update(flatten_space(value, dotted))
        else:
            out[dotted] = value
    return out


def parse_space(params: dict[str, Any] | DictConfig | None, where: str = "sweep.params") -> dict[str, dict[str, Any]]:
    """Validate a search space ``{dotted key: {type, low, high, log, step, choices}}``.

    Args:
        params: The space (nested mappings are flattened to dotted keys).
        where: Name of the config entry, for error messages.

    Raises:
        ConfigError: An empty space or a malformed parameter (named).
    """
    raw = OmegaConf.to_container(params, resolve=True) if isinstance(params, DictConfig) else dict(params or {})
    raw = flatten_space(raw)
    if not raw:
        hint = "choose a search space with sweep=<name> (configs/sweep/<name>.yaml)" if where.startswith("sweep") else \
            "give at least one parameter (configs/tune/<track>/<method>.yaml, tune.space=FILE or tune.params)"
        raise ConfigError(f"{where} is empty; {hint}")
    out = {}
    for key, spec in raw.items():
        if not isinstance(spec, dict) or spec.get("type") not in PARAM_TYPES:
            raise ConfigError(f"{where}['{key}'] needs type: one of {', '.join(PARAM_TYPES)} (got {spec!r})")
        if spec["type"] == "categorical" and not spec.get("choices"):
            raise ConfigError(f"{where}['{key}'] (categorical) needs a non-empty choices list")
        if spec["type"] != "categorical":
            low, high = spec.get("low"), spec.get("high")
            if not isinstance(low, (int, float)) or not isinstance(high, (int, float)) or low > high:
                raise ConfigError(f"{where}['{key}'] needs numbers low <= high (got low={low}, high={high})")
            if spec.get("log") and low <= 0:
                raise ConfigError(f"{where}['{key}'] has log: true, so low must be > 0 (got {low})")
        out[str(key)] = spec
    return out


def suggest(trial: Any, space: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Sample one value per parameter from an Optuna trial."""
    values: dict[str, Any] = {}
    for key, s in space.items():
        if s["type"] == "float":
            values[key] = trial.suggest_float(key, float(s["low"]), float(s["high"]), log=bool(s.get("log", False)), step=s.get("step"))
        elif s["type"] == "int":
            values[key] = trial.suggest_int(key, int(s["low"]), int(s["high"]), log=bool(s.get("log", False)), step=int(s.get("step") or 1))
        else:
            values[key] = trial.suggest_categorical(key, list(s["choices"]))
    return values


def as_overrides(values: dict[str, Any]) -> list[str]:
    """``{"a.b": 1e-4}`` -> ``["a.b=0.0001"]`` (Hydra override syntax)."""
    out = []
    for key, v in values.items():
        text = "null" if v is None else str(v).lower() if isinstance(v, bool) else repr(v) if isinstance(v, float) else str(v)
        out.append(f"{key}={text}")
    return out


def quote(arg: str) -> str:
    """Shell-quote one command-line argument."""
    return shlex.quote(arg)


# ----------------------------------------------------------------------------- storage
def storage(url: str) -> Any:
    """An Optuna storage; SQLite gets a long lock timeout so several processes can share it."""
    import optuna

    if url.startswith("sqlite:///"):
        Path(url[len("sqlite:///"):]).expanduser().parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 120}})
    return url


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``path`` (created if missing) for the duration of the block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


# ----------------------------------------------------------------------------- workers
def spawn_workers(command: str, n: int, argv: list[str], out_dir: Path, extra: list[str]) -> None:
    """Start ``n`` processes of ``obliviate <command> <argv> <extra>`` and wait for all of them.

    Args:
        command: The sub-command (``sweep``, ``tune``).
        n: Number of worker processes.
        argv: The command line's overrides.
        out_dir: Where ``worker_<i>.log`` goes.
        extra: Overrides that make a process a plain worker (e.g. ``tune.workers=1``).

    Raises:
        ObliviateError: A worker exited with a non-zero status (its log is named).
    """
    procs = []
    for i in range(n):
        logf = open(out_dir / f"worker_{i}.log", "w")  # noqa: SIM115 (closed below)
        cmd = [sys.executable, "-m", "obliviate.cli", command, *argv, *extra]
        procs.append((subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT), logf))
    failed = []
    for i, (proc, logf) in enumerate(procs):
        if proc.wait() != 0:
            failed.append(i)
        logf.close()
    if failed:
        raise ObliviateError(f"{command} worker(s) {failed} failed; see {out_dir}/worker_<i>.log")
