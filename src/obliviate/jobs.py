"""The ``obliviate`` commands as Python functions: what the CLI runs, callable from a notebook.

Example:
    >>> from obliviate import jobs
    >>> overrides = ["experiment=vision/digits", "trainer=GA", "forget_class=9"]
    >>> res = jobs.unlearn(jobs.compose("unlearn", overrides), overrides)  # doctest: +SKIP
    >>> res["unlearned"]["avg_gap"], res["run_dir"]  # doctest: +SKIP

Each job takes the composed config of its command (:func:`compose` gives the same config as
``obliviate <command> key=value ...``) and, where an experiment's per-method preset applies, the
user's overrides (keys the user set are never overwritten by the preset). A job creates its run
directory, writes the manifest (:class:`obliviate.run.Run`) and every result file, and returns
the results it wrote, with ``run_dir``; user errors raise :class:`obliviate.errors.ObliviateError`.
:mod:`obliviate.cli` only parses the command line, calls one of these and prints the result.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from obliviate.errors import ConfigError

__all__ = ["compare", "compose", "evaluate", "prune", "quickstart", "report", "sweep", "train", "track", "tune", "unlearn"]

CONFIG_MODULE = "obliviate.configs"


def compose(config_name: str, overrides: Sequence[str] = ()) -> DictConfig:
    """The config ``obliviate <config_name> *overrides`` runs with (the packaged YAML).

    Works inside a running ``obliviate`` command (Hydra already initialised) and outside it.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():
        return hydra_compose(config_name=config_name, overrides=list(overrides))
    with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
        return hydra_compose(config_name=config_name, overrides=list(overrides))


def track(cfg: DictConfig) -> str:
    """``llm`` or ``vision``: the configured model's track."""
    model = cfg.get("model")  # the sweep config has no model
    return "vision" if model is None else str(model.get("track", "vision"))


def _run_dir(cfg: DictConfig) -> Path:
    from obliviate.rundirs import pin_run_dir

    run_dir = Path(pin_run_dir(cfg).paths.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def _prepare(cfg: DictConfig, overrides: Sequence[str]) -> tuple[DictConfig, Path]:
    """Apply the experiment's method preset (keys in ``overrides`` win) and create the run dir."""
    from obliviate.pipelines.common import apply_method_preset

    cfg = apply_method_preset(cfg, cfg.get("presets"), cfg.trainer.handler, list(overrides))
    return cfg, _run_dir(cfg)


def _manifest(run_dir: Path, cfg: DictConfig, command: str):
    """The run's manifest context (status, versions, hashes); see :class:`obliviate.run.Run`."""
    from obliviate.run import Run

    return Run(run_dir, cfg, command, overwrite=bool(cfg.get("overwrite")), resume=bool(cfg.get("resume")))


def _check_llm_data(cfg: DictConfig) -> None:
    if cfg.data.get("forget") is None and cfg.data.get("full") is None:
        raise ConfigError(f"model '{cfg.model.get('builder')}' has track llm but the vision data defaults were composed; "
                          "add `defaults: [override /track@_global_.track: llm]` to its model config or pass track=llm")


def _llm_job(cfg: DictConfig, overrides: Sequence[str], command: str) -> dict[str, Any]:
    from obliviate.pipelines import llm

    _check_llm_data(cfg)
    cfg, run_dir = _prepare(cfg, overrides)
    with _manifest(run_dir, cfg, command) as run:
        res = (llm.run_train if command == "train" else llm.run_unlearning)(cfg, run_dir, run=run)
        run.status = res["status"]
    return {**res, "track": "llm", "run_dir": str(run_dir)}


def train(cfg: DictConfig, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """``obliviate train``: the original model and the retrained gold standard, evaluated.

    Returns ``metrics.json``'s content (vision: ``original`` / ``retrain`` rows; LLM: ``stages``).
    """
    if track(cfg) == "llm":
        return _llm_job(cfg, overrides, "train")
    from obliviate.pipelines import vision

    cfg, run_dir = _prepare(cfg, overrides)
    with _manifest(run_dir, cfg, "train"):
        res = vision.run_train(cfg, run_dir)
    return {**res, "run_dir": str(run_dir)}


def unlearn(cfg: DictConfig, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """``obliviate unlearn``: one unlearning run against the original and retrained models.

    Returns ``metrics.json``'s content (vision: ``original`` / ``unlearned`` / ``retrain`` rows).
    """
    if track(cfg) == "llm":
        return _llm_job(cfg, overrides, "unlearn")
    import logging

    from obliviate.pipelines import vision

    cfg, run_dir = _prepare(cfg, overrides)
    with _manifest(run_dir, cfg, "unlearn") as run:
        res = vision.run_unlearning(cfg, run_dir)
        run.data_files.update(res["data_files"])
        run.status = res["status"]
        if res["status"] == "diverged":
            logging.getLogger("obliviate").warning("the run diverged: %s", res["divergence"]["reason"])
    return {**res, "run_dir": str(run_dir)}


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """``obliviate eval``: TOFU / MUSE / lm-eval evaluation of the configured LLM."""
    from obliviate.pipelines import llm_eval

    if track(cfg) != "llm":
        raise ConfigError(f"obliviate eval needs an LLM (track llm), got model track '{track(cfg)}'; e.g. model=tiny-llama")
    run_dir = _run_dir(cfg)
    with _manifest(run_dir, cfg, "eval") as run:
        res = llm_eval.run_eval(cfg, run_dir, run=run)
        run.status = res["status"]
    return {**res, "run_dir": str(run_dir)}


def quickstart(cfg: DictConfig, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """``obliviate quickstart``: every vision method on digits (``track=llm``: tiny-llama).

    Each method's run is composed as ``obliviate unlearn trainer=<method>`` with ``overrides``.
    """
    from obliviate.pipelines.common import apply_method_preset

    overrides = list(overrides)
    run_dir = _run_dir(cfg)
    if track(cfg) == "llm":  # tiny-llama on synthetic authors (obliviate.pipelines.quickstart_llm)
        from obliviate.pipelines.quickstart_llm import compose_unlearn, run_quickstart_llm

        if cfg.data.get("full") is None:
            raise ConfigError("the LLM quickstart is `obliviate quickstart track=llm` (experiment llm/quickstart); "
                              f"model '{cfg.model.get('builder')}' alone composes the vision data")
        with _manifest(run_dir, cfg, "quickstart") as run:
            res = run_quickstart_llm(cfg, run_dir, lambda method, extra: compose_unlearn(compose, method, overrides, extra))
            run.status = res["status"]
        return {**res, "run_dir": str(run_dir)}
    from obliviate.pipelines.quickstart import SELECTION_KEYS, run_quickstart

    def compose_method(method: str, selection: dict) -> DictConfig:
        kept = [o for o in overrides if not o.split("=", 1)[0].lstrip("+~").startswith(("trainer", "quickstart", *SELECTION_KEYS))]
        sub = compose("unlearn", [*kept, f"trainer={method}", *(f"{k}={v}" for k, v in selection.items())])
        return apply_method_preset(sub, sub.get("presets"), method, overrides)

    with _manifest(run_dir, cfg, "quickstart"):
        res = run_quickstart(cfg, run_dir, compose_method)
    return {**res, "run_dir": str(run_dir)}


def prune(cfg: DictConfig) -> dict[str, Any]:
    """``obliviate prune``: OMP/IMP (vision), LoRAPrune and the unlearning prune (both tracks)."""
    run_dir = _run_dir(cfg)
    if track(cfg) == "llm":
        from obliviate.pipelines.prune_llm import run_prune_llm

        with _manifest(run_dir, cfg, "prune"):
            res = run_prune_llm(cfg, run_dir)
    else:
        from obliviate.pipelines.prune import run_prune

        with _manifest(run_dir, cfg, "prune"):
            res = run_prune(cfg, run_dir)
    return {**res, "track": track(cfg), "run_dir": str(run_dir)}


def sweep(cfg: DictConfig, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """``obliviate sweep``: an Optuna search whose trials run ``sweep.command`` in process."""
    from obliviate.pipelines.sweep import run_sweep

    res = run_sweep(cfg, compose, list(overrides))
    return {**(res or {}), "run_dir": str(cfg.paths.output_dir)}


def tune(cfg: DictConfig, overrides: Sequence[str] = ()) -> dict[str, Any] | None:
    """``obliviate tune``: retrain-free search for one method; returns ``tune.json``'s content
    (``None`` in a worker process). Rerunning the same command continues the study."""
    from obliviate.pipelines.tune import run_tune
    from obliviate.run import Run

    run_dir = _run_dir(cfg)
    if cfg.tune.get("role") == "worker":  # spawned by tune.workers: trials only
        return run_tune(cfg, list(overrides))
    with Run(run_dir, cfg, "tune", resume=True) as run:  # rerunning continues the study (never "already completed")
        res = run_tune(cfg, list(overrides), run=run)
    return None if res is None else {**res, "run_dir": str(run_dir)}


def report(run_dirs: Sequence[str | Path], output: str | Path | None = None) -> Path:
    """``obliviate report``: a self-contained HTML report (plots and tables) of run dirs."""
    from obliviate.report.html import write_report

    return Path(write_report(list(run_dirs), output))


def compare(run_dirs: Sequence[str | Path], fmt: str = "markdown") -> str:
    """``obliviate compare``: the headline metrics of run dirs as a markdown or CSV table."""
    from obliviate.report.compare import compare as compare_runs

    return compare_runs(list(run_dirs), fmt=fmt)
