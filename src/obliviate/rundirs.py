"""Default run directories: a name that says what ran, and never a finished run's folder.

``paths.output_dir`` defaults to ``${run_dir:outputs}``: ``outputs/<name>`` with the name built
from the composed config -- command, method, data, forget selection, and markers for pruning
and LoRA::

    unlearn-GA-digits-class9        obliviate unlearn experiment=vision/digits trainer=GA forget_class=9
    unlearn-RL-cifar10-random10pct  obliviate unlearn experiment=vision/cifar10 trainer=RL forget_fraction=0.1
    unlearn-FT-digits-class9-omp90  ... pruning=omp pruning.rate=0.9
    train-digits-class9             obliviate train experiment=vision/digits forget_class=9
    unlearn-NPO-synthetic-TOFU_QA_FORGET10-lora
    quickstart-digits, quickstart-llm, prune-imp90-digits, eval-target-forget10, sweep-digits_GA

When that folder already holds something (another run, finished or not), a time stamp is
appended (``unlearn-GA-digits-class9-20250612-165140``, then ``-2``, ``-3`` within the same
second), so commands can be run again and again in one folder and a finished run is never
touched. ``resume=true`` picks the newest folder of that name instead (an unfinished one
first), ``overwrite=true`` the plain name. A sweep always uses the plain name: several shells
running the same sweep command share its study. An explicit ``paths.output_dir=DIR`` is used
as given (:class:`obliviate.run.Run` then refuses to overwrite a completed run).

The name is chosen when the config is first resolved (Hydra creates the folder at once); a
folder that holds nothing but Hydra's ``.hydra`` counts as free, so later resolutions give the
same answer, and :func:`pin_run_dir` fixes the value in the config for the rest of the job.
Under torchrun / accelerate (``WORLD_SIZE`` > 1) rank 0 chooses and the other ranks read its
choice from ``<parent>/.rundir-claims/``, so all processes write into one folder.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

_SLUG = re.compile(r"[^A-Za-z0-9_.+-]+")
HYDRA_SUBDIR = ".hydra"
_STAMP_RE = r"-\d{8}-\d{6}(?:-\d+)?"
_STAMP: str | None = None
_STARTED = time.time()
CLAIM_WAIT_S = 300.0


def _slug(value: Any) -> str:
    text = str(value)
    if "/" in text or "\\" in text:
        text = Path(text.rstrip("/\\")).name
    return _SLUG.sub("_", text).strip("_.-") or "x"


def _get(cfg: Any, dotted: str, default: Any = None) -> Any:
    try:
        value = OmegaConf.select(cfg, dotted, default=default, throw_on_missing=False)
    except Exception:  # an unresolvable interpolation: the name simply leaves that part out
        return default
    return default if value is None else value


def selection_tag(cfg: Any) -> str | None:
    """``class9``, ``class1+2``, ``random10pct``, ``random50``, ``index-<file stem>`` (or ``None``)."""
    fc = _get(cfg, "forget_class")
    if fc is not None:
        classes = list(fc) if OmegaConf.is_list(fc) or isinstance(fc, (list, tuple)) else [fc]
        return "class" + "+".join(_slug(c) for c in classes)
    if _get(cfg, "forget_count") is not None:
        return f"random{int(_get(cfg, 'forget_count'))}"
    if _get(cfg, "forget_fraction") is not None:
        return f"random{float(_get(cfg, 'forget_fraction')) * 100:g}pct"
    if _get(cfg, "forget_index_file") is not None:
        return "index-" + _slug(Path(str(_get(cfg, "forget_index_file"))).stem)
    return None


def track(cfg: Any) -> str:
    return str(_get(cfg, "model.track", "vision"))


def data_tag(cfg: Any) -> str | None:
    """Vision: the dataset name (an image folder: its folder name). LLM: ``data.name`` if set,
    else the forget dataset's name (``synthetic-`` first for the generated authors)."""
    if track(cfg) == "llm":
        value = _get(cfg, "data.name") or _get(cfg, "data.forget")
        if value is None:
            return None
        if not isinstance(value, (str, int, float)):
            value = "custom"
        name = _slug(Path(str(value)).stem if str(value).endswith((".yaml", ".yml", ".json", ".jsonl")) else value)
        return f"synthetic-{name}" if _get(cfg, "synthetic") else name
    name = _get(cfg, "data.name")
    if name == "imagefolder" and _get(cfg, "data.path"):
        return _slug(_get(cfg, "data.path"))
    return None if name is None else _slug(name)


def transform_tags(cfg: Any) -> list[str]:
    """``omp90`` / ``imp90`` / ``unlearning_prune`` ... for pruning, ``lora`` for LoRA."""
    tags = []
    pruning = _get(cfg, "pruning.name")
    if pruning not in (None, "none"):
        rate = _get(cfg, "pruning.rate")
        tags.append(f"{_slug(pruning)}{float(rate) * 100:g}" if isinstance(rate, (int, float)) else _slug(pruning))
    if _get(cfg, "lora.enabled"):
        tags.append("lora")
    return tags


def run_name(cfg: Any) -> str:
    """The default run directory name of a composed config (see the module docstring)."""
    command = str(_get(cfg, "task_name", "run"))
    parts: list[str | None]
    if command == "quickstart":
        parts = [command, "llm" if track(cfg) == "llm" else data_tag(cfg)]
    elif command == "sweep":
        parts = [command, _get(cfg, "sweep.name")]
    elif command == "prune":
        parts = [command, *transform_tags(cfg), data_tag(cfg), selection_tag(cfg)]
    elif command == "eval":
        model = _get(cfg, "model.model_args.pretrained_model_name_or_path") or _get(cfg, "original_checkpoint")
        parts = [command, _slug(model) if model else None, _get(cfg, "forget_split")]
    elif command == "train":
        parts = [command, data_tag(cfg), selection_tag(cfg), *(["lora"] if _get(cfg, "lora.enabled") else [])]
    else:
        parts = [command, _get(cfg, "trainer.handler"), data_tag(cfg), selection_tag(cfg), *transform_tags(cfg)]
    return "-".join(_slug(p) for p in parts if p not in (None, ""))


def is_free(path: Path) -> bool:
    """A folder is free when it does not exist or holds nothing but Hydra's ``.hydra``."""
    if not path.exists():
        return True
    return path.is_dir() and all(p.name == HYDRA_SUBDIR for p in path.iterdir())


def _stamp() -> str:
    global _STAMP
    if _STAMP is None:
        _STAMP = time.strftime("%Y%m%d-%H%M%S")
    return _STAMP


def new_invocation() -> None:
    """Start a new time stamp (the CLI calls this once per command)."""
    global _STAMP
    _STAMP = None


def _manifest_status(path: Path) -> str | None:
    import json

    try:
        return json.loads((path / "manifest.json").read_text()).get("status")
    except (OSError, ValueError, AttributeError):
        return None


def existing_runs(parent: Path, base: str) -> list[Path]:
    """Folders of ``base`` under ``parent`` (plain and time-stamped) that hold something, oldest first."""
    pattern = re.compile(re.escape(base) + f"(?:{_STAMP_RE})?$")
    if not parent.is_dir():
        return []
    found = [p for p in parent.iterdir() if p.is_dir() and pattern.match(p.name) and not is_free(p)]
    return sorted(found, key=lambda p: p.stat().st_mtime)


def choose_run_dir(parent: str | Path, base: str, *, resume: bool = False, overwrite: bool = False, share: bool = False) -> Path:
    """``parent/base`` if free (or ``share``/``overwrite``), the newest existing folder of that name
    under ``resume`` (an unfinished run first), else ``parent/base-<stamp>[-N]``."""
    parent = Path(parent)
    plain = parent / base
    if share or overwrite:
        return plain
    if resume:
        runs = existing_runs(parent, base)
        unfinished = [p for p in runs if _manifest_status(p) != "completed"]
        if unfinished or runs:
            return (unfinished or runs)[-1]
        return plain
    if is_free(plain):
        return plain
    stamped = parent / f"{base}-{_stamp()}"
    n = 2
    while not is_free(stamped):
        stamped = parent / f"{base}-{_stamp()}-{n}"
        n += 1
    return stamped


def _launch_key() -> str | None:
    """An id shared by the processes of one torchrun / accelerate launch (``None`` when single-process)."""
    if int(os.environ.get("WORLD_SIZE", "1") or 1) <= 1:
        return None
    return os.environ.get("TORCHELASTIC_RUN_ID") or f"{os.environ.get('MASTER_ADDR', '')}:{os.environ.get('MASTER_PORT', '')}"


def _claimed(parent: Path, base: str, key: str, choose: Any) -> Path:
    """Rank 0 runs ``choose()`` and records the folder; the other ranks wait for that record."""
    claim = parent / ".rundir-claims" / hashlib.sha1(f"{key}|{base}".encode()).hexdigest()[:16]
    if int(os.environ.get("RANK", "0") or 0) == 0:
        chosen = choose()
        from obliviate.io import atomic_write_text

        atomic_write_text(claim, str(chosen))
        return chosen
    deadline = time.time() + CLAIM_WAIT_S
    while time.time() < deadline:
        # a record of this launch: written after this process started (older ones are earlier launches)
        if claim.is_file() and claim.stat().st_mtime >= _STARTED - 60:
            return Path(claim.read_text().strip())
        time.sleep(0.1)
    from obliviate.errors import ConfigError

    raise ConfigError(f"rank {os.environ.get('RANK')} did not learn the run dir from rank 0 within {CLAIM_WAIT_S:.0f} s; "
                      "pass paths.output_dir=DIR to every process")


def default_run_dir(parent: str = "outputs", *, _root_: Any = None) -> str:
    """The ``${run_dir:PARENT}`` resolver: ``PARENT/<run_name>`` made unique (see :func:`choose_run_dir`)."""
    cfg = _root_
    base = run_name(cfg)

    def choose() -> Path:
        return choose_run_dir(parent, base, resume=bool(_get(cfg, "resume", False)), overwrite=bool(_get(cfg, "overwrite", False)),
                              share=str(_get(cfg, "task_name", "")) == "sweep")

    key = _launch_key()
    return str(choose() if key is None else _claimed(Path(parent), base, key, choose))


def pin_run_dir(cfg: DictConfig) -> DictConfig:
    """Resolve ``paths.output_dir`` once and store the value in ``cfg`` (the folder must not
    change name after the job starts writing into it)."""
    if OmegaConf.select(cfg, "paths.output_dir", default=None) is None:
        return cfg
    value = str(cfg.paths.output_dir)
    read_only = OmegaConf.is_readonly(cfg)
    OmegaConf.set_readonly(cfg, False)
    cfg.paths.output_dir = value
    OmegaConf.set_readonly(cfg, read_only)
    return cfg
