"""``obliviate sweep``: Optuna search over a method's hyper-parameters.

A search space is a YAML file ``configs/sweep/<name>.yaml`` (selected with ``sweep=<name>``)::

    command: unlearn                     # the job each trial runs
    base: [experiment=vision/digits, trainer=GA, forget_class=9]
    params:                              # dotted config key -> distribution
      trainer.args.learning_rate: {type: float, low: 1e-5, high: 1e-3, log: true}
      trainer.args.num_train_epochs: {type: int, low: 1, high: 5}
      trainer.method_args.alpha: {type: categorical, choices: [0.5, 1.0, 2.0]}

Each trial composes the job's config with Hydra's compose API (overrides = the space's
``base`` + the command line's ``sweep.overrides=[...]`` + the sampled values), runs it in
process with the same pipeline functions as ``obliviate unlearn`` and reads its
``metrics.json``. Objective: vision, minimise Avg. Gap; LLM, maximise forget quality and
model utility (multi-objective, the Pareto front is reported). Vision reference models are
trained once (under ``<output_dir>/references``, guarded by a file lock) and reused by every
trial via ``original_checkpoint`` / ``retrain_checkpoint`` unless those are given.

Parallelism: the study lives in one storage (SQLite by default), so several processes can
share it: run the same command in N shells, or pass ``sweep.workers=N`` to spawn N worker
processes. ``sweep.n_trials`` is the total over all workers.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from obliviate.errors import ConfigError
from obliviate.io import atomic_write_json
from obliviate.pipelines.study import PARAM_TYPES, as_overrides, file_lock, parse_space, quote, spawn_workers, storage, suggest

log = logging.getLogger(__name__)

LLM_OBJECTIVES = ("forget_quality", "model_utility")
__all__ = ["PARAM_TYPES", "as_overrides", "parse_space", "run_sweep", "storage", "suggest"]


# ----------------------------------------------------------------------------- study
def directions(track: str) -> list[str]:
    """Optimisation directions of a track's objective."""
    return ["maximize", "maximize"] if track == "llm" else ["minimize"]


def objective_values(metrics_dir: Path, track: str) -> list[float]:
    """The objective of a finished trial from its run dir (``metrics.json`` / TOFU summary)."""
    from obliviate.report.runs import load_run

    run = load_run(metrics_dir)
    if track == "llm":
        vals = [run.headline.get(k) for k in LLM_OBJECTIVES]
        if any(v is None for v in vals):
            raise ConfigError(f"trial {metrics_dir} has no {' / '.join(LLM_OBJECTIVES)} (TOFU_SUMMARY.json); enable the TOFU evaluation")
        return [float(v) for v in vals]
    gap = run.headline.get("avg_gap")
    if gap is None or not math.isfinite(float(gap)):
        raise ConfigError(f"trial {metrics_dir} has no finite avg_gap in metrics.json")
    return [float(gap)]


def load_study(cfg: DictConfig, track: str) -> Any:
    """Create or load the study named ``sweep.study_name`` in ``sweep.storage``."""
    import optuna

    sampler = optuna.samplers.TPESampler(seed=None if cfg.sweep.get("seed") is None else int(cfg.sweep.seed) + os.getpid() % 9973)
    try:
        return optuna.create_study(study_name=str(cfg.sweep.study_name), storage=storage(str(cfg.sweep.storage)),
                                   directions=directions(track), sampler=sampler, load_if_exists=True)
    except ValueError as exc:
        raise ConfigError(f"study '{cfg.sweep.study_name}' in {cfg.sweep.storage} does not fit this sweep ({exc}); "
                          "choose another sweep.study_name") from None


# ----------------------------------------------------------------------------- trials
Compose = Callable[[str, list[str]], DictConfig]


def base_overrides(cfg: DictConfig) -> list[str]:
    """The overrides every trial shares: the space's ``base`` then ``sweep.overrides``."""
    return [str(o) for o in (*(cfg.sweep.get("base") or []), *(cfg.sweep.get("overrides") or []))]


def reference_overrides(cfg: DictConfig, compose: Compose, out_dir: Path) -> list[str]:
    """Train the vision reference models once (or reuse them) and return checkpoint overrides."""
    base = base_overrides(cfg)
    given = {o.split("=", 1)[0].lstrip("+") for o in base}
    top = [f"{k}={cfg[k]}" for k in ("original_checkpoint", "retrain_checkpoint") if cfg.get(k) and k not in given]
    given |= {o.split("=", 1)[0] for o in top}
    if {"original_checkpoint", "retrain_checkpoint"} <= given:
        return top
    job = compose(str(cfg.sweep.command), base)
    if str(job.model.get("track", "vision")) != "vision":
        return []
    ref_dir = out_dir / "references"
    with file_lock(out_dir / ".references.lock"):
        if not all((ref_dir / s / "model.safetensors").is_file() for s in ("original", "retrain")):
            from obliviate.pipelines import vision
            from obliviate.pipelines.common import forget_selection

            log.info("training the reference models once for all trials under %s", ref_dir)
            data = vision.load_data(job)
            split = vision.split_forget(data, forget_selection(job), int(job.seed))
            vision.obtain_reference_models(job, data, split, ref_dir)
    out = list(top)
    if "original_checkpoint" not in given:
        out.append(f"original_checkpoint={ref_dir / 'original' / 'model.safetensors'}")
    if "retrain_checkpoint" not in given:
        out.append(f"retrain_checkpoint={ref_dir / 'retrain'}")
    return out


def run_job(job: DictConfig, run_dir: Path, command: str, user_overrides: list[str]) -> None:
    """Run one unlearning job in process (what ``obliviate unlearn`` does, without printing)."""
    from obliviate.pipelines.common import apply_method_preset
    from obliviate.run import Run

    job = apply_method_preset(job, job.get("presets"), job.trainer.handler, user_overrides)
    run_dir.mkdir(parents=True, exist_ok=True)
    with Run(run_dir, job, command, overwrite=True) as run:
        if str(job.model.get("track", "vision")) == "llm":
            from obliviate.pipelines import llm

            res = llm.run_unlearning(job, run_dir, run=run)
        else:
            from obliviate.pipelines import vision

            res = vision.run_unlearning(job, run_dir, save_checkpoint=False)
        run.status = res["status"]


def make_objective(cfg: DictConfig, compose: Compose, out_dir: Path, track: str, refs: list[str]) -> Callable[[Any], Any]:
    """The Optuna objective: sample, compose, run the job, read its metrics."""
    space = parse_space(cfg.sweep.params)
    command = str(cfg.sweep.command)
    base = ["++trainer.args.disable_tqdm=true", *refs, *base_overrides(cfg)]

    def objective(trial: Any) -> Any:
        values = suggest(trial, space)
        trial_dir = out_dir / "trials" / f"trial_{trial.number:04d}"
        overrides = [*base, *as_overrides(values), f"paths.output_dir={trial_dir}"]
        trial.set_user_attr("run_dir", str(trial_dir))
        trial.set_user_attr("overrides", [*refs, *base_overrides(cfg), *as_overrides(values)])
        run_job(compose(command, overrides), trial_dir, command, overrides)
        vals = objective_values(trial_dir, track)
        log.info("trial %d: %s -> %s", trial.number, values, vals)
        return vals[0] if len(vals) == 1 else tuple(vals)

    return objective


def best_commands(study: Any, cfg: DictConfig) -> list[dict[str, Any]]:
    """The best trial (single objective) or the Pareto front, as ready-to-run commands."""
    import optuna

    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not done:
        return []
    best = [study.best_trial] if len(study.directions) == 1 else study.best_trials
    out = []
    for t in best:
        args = [*(t.user_attrs.get("overrides") or [*base_overrides(cfg), *as_overrides(t.params)]),
                f"paths.output_dir=outputs/sweep_best_{t.number}"]
        cmd = "obliviate " + str(cfg.sweep.command) + " " + " ".join(quote(a) for a in args)
        out.append({"trial": t.number, "values": t.values, "params": t.params, "run_dir": t.user_attrs.get("run_dir"), "command": cmd})
    return out


def run_sweep(cfg: DictConfig, compose: Compose, user_argv: list[str]) -> dict[str, Any]:
    """Run (or join) the study; the main process writes ``best.json`` and prints the best command.

    Args:
        cfg: The composed ``sweep`` config.
        compose: ``(config_name, overrides) -> cfg`` (Hydra's compose API).
        user_argv: The command line's overrides (re-used to start worker processes).
    """
    from obliviate.extras import require

    optuna = require("optuna")

    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    parse_space(cfg.sweep.params)
    job = compose(str(cfg.sweep.command), base_overrides(cfg))
    track = str(job.model.get("track", "vision"))
    refs = reference_overrides(cfg, compose, out_dir)
    study = load_study(cfg, track)
    n_trials, workers = int(cfg.sweep.n_trials), int(cfg.sweep.get("workers") or 1)
    if workers > 1:
        keep = [a for a in user_argv if not a.split("=", 1)[0].lstrip("+~").startswith(("sweep.workers", "sweep.print_best"))]
        spawn_workers("sweep", workers, keep, out_dir, ["sweep.workers=1", "sweep.print_best=false"])
    else:
        states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.PRUNED,
                  optuna.trial.TrialState.FAIL)
        already = len(study.get_trials(deepcopy=False, states=states))
        if already < n_trials:
            study.optimize(make_objective(cfg, compose, out_dir, track, refs), n_trials=n_trials - already,
                           n_jobs=int(cfg.sweep.get("n_jobs") or 1), catch=(RuntimeError, ValueError),
                           callbacks=[optuna.study.MaxTrialsCallback(n_trials, states=states)], gc_after_trial=True)
    study = load_study(cfg, track)
    result = {"study_name": study.study_name, "storage": str(cfg.sweep.storage), "directions": directions(track),
              "n_complete": sum(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials), "best": best_commands(study, cfg)}
    if cfg.sweep.get("print_best", True):
        atomic_write_json(out_dir / "best.json", result)
        what = "avg_gap (minimise)" if track != "llm" else "forget_quality, model_utility (maximise; Pareto front)"
        print(f"\nstudy '{study.study_name}': {result['n_complete']} complete trial(s); objective {what}")
        for b in result["best"]:
            print(f"\nbest trial {b['trial']}: {b['values']}  {b['params']}\n  {b['command']}")
        print(f"\nbest: {out_dir / 'best.json'}")
    return result
