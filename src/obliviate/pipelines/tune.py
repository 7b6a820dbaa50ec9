"""``obliviate tune``: retrain-free hyper-parameter search for one unlearning method.

``obliviate tune <overrides of obliviate unlearn> tune.n_trials=N`` searches the method's
space (``configs/tune/<track>/<method>.yaml``: learning rate, epochs and the method's
hyper-parameters) with Optuna's TPE sampler. Each trial unlearns a copy of the original model
in process and is scored by the objective (``tune.objective``):

- ``retrain_free`` (default): the forget set against never-seen data plus a retain penalty
  (:mod:`obliviate.metrics.retrain_free`, docs/metrics.md section 4). It opens no retrained /
  retain model and, on the vision track, never the test split;
- ``retrain``: the papers' oracle (vision Avg. Gap; LLM ``−log10`` forget quality + the same
  retain penalty), for research.

Intermediate objective values (each epoch end, or every ``tune.report_every_steps`` steps)
feed Optuna's median pruner, which stops hopeless trials. Trials live in one study
(``tune.storage``, SQLite by default): ``tune.workers=K`` processes, or the same command in K
shells, share it; re-running the command continues it (a trial cut short by a kill is run
again with the same parameters). The shipped preset is enqueued as the first trial, so the
search starts from it.

At the end the main process writes ``tune.json`` (objective, best parameters, every trial,
validation), prints the best configuration as an ``obliviate unlearn`` command and, when a
retrained / retain model is given (or ``tune.validate=true`` trains one), validates the preset
and the tuned configuration with the full metrics under ``validation/{default,tuned}/``.
"""

from __future__ import annotations

import copy
import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from obliviate.errors import ConfigError
from obliviate.io import atomic_write_json, read_json
from obliviate.pipelines.common import write_config
from obliviate.pipelines.study import as_overrides, file_lock, parse_space, quote, spawn_workers
from obliviate.pipelines.tune_trials import _states, interrupted_numbers, load_study, optimize, recover_interrupted, with_values

log = logging.getLogger(__name__)

OBJECTIVES = ("retrain_free", "retrain")
SPACE_DIR = Path(__file__).resolve().parents[1] / "configs" / "tune"
#: Validation metrics copied into tune.json per track.
VALIDATION_KEYS = {"vision": ("UA", "RA", "TA", "MIA", "avg_gap"),
                   "llm": ("forget_quality", "model_utility", "forget_truth_ratio", "forget_Q_A_Prob", "forget_Q_A_ROUGE",
                           "retain_Q_A_Prob", "retain_Q_A_ROUGE", "privleak", "extraction_strength")}


# ----------------------------------------------------------------------------- settings
@dataclass
class TuneSettings:
    """``cfg.tune`` after validation (see ``configs/tune.yaml`` for each field's meaning)."""

    n_trials: int
    timeout_min: float | None
    workers: int
    objective: str
    tolerance: float | None
    penalty_weight: float
    report_every_steps: int | None
    pruner: str
    pruner_startup_trials: int
    pruner_warmup_steps: int
    validate: str
    record_oracle: bool
    storage: str
    study_name: str
    seed: int | None
    role: str

    @classmethod
    def from_cfg(cls, cfg: DictConfig) -> "TuneSettings":
        t = cfg.get("tune")
        if t is None:
            raise ConfigError("the config has no tune block; run `obliviate tune ...` (configs/tune.yaml)")
        objective = str(t.get("objective", "retrain_free"))
        if objective not in OBJECTIVES:
            raise ConfigError(f"tune.objective={objective} is unknown; choose one of {', '.join(OBJECTIVES)}")
        validate = str(t.get("validate", "auto")).lower()
        if validate not in ("auto", "true", "false"):
            raise ConfigError(f"tune.validate must be auto, true or false (got {t.get('validate')})")
        pruner = str(t.get("pruner", "median")).lower()
        if pruner not in ("median", "none"):
            raise ConfigError(f"tune.pruner must be median or none (got {pruner})")
        n_trials, workers = int(t.get("n_trials", 20)), int(t.get("workers") or 1)
        if n_trials < 1 or workers < 1:
            raise ConfigError(f"tune.n_trials and tune.workers must be >= 1 (got {n_trials}, {workers})")
        every = t.get("report_every_steps")
        if every is not None and int(every) < 1:
            raise ConfigError(f"tune.report_every_steps must be a positive integer or null (got {every})")
        return cls(n_trials=n_trials, timeout_min=None if t.get("timeout_min") is None else float(t.timeout_min), workers=workers,
                   objective=objective, tolerance=None if t.get("tolerance") is None else float(t.tolerance),
                   penalty_weight=float(t.get("penalty_weight", 10.0)), report_every_steps=None if every is None else int(every),
                   pruner=pruner, pruner_startup_trials=int(t.get("pruner_startup_trials", 5)),
                   pruner_warmup_steps=int(t.get("pruner_warmup_steps", 0)), validate=validate,
                   record_oracle=bool(t.get("record_oracle", False)), storage=str(t.storage), study_name=str(t.get("study_name") or "tune"),
                   seed=None if t.get("seed") is None else int(t.seed), role=str(t.get("role", "main")))


def track_of(cfg: DictConfig) -> str:
    """``vision`` or ``llm`` (the model config's ``track``)."""
    return str(cfg.model.get("track", "vision"))


# ----------------------------------------------------------------------------- search space
def space_file(track: str, method: str) -> Path:
    """``configs/tune/<track>/<method>.yaml`` (method = the registered name)."""
    return SPACE_DIR / track / f"{method}.yaml"


def load_space(cfg: DictConfig, track: str, method: str) -> dict[str, dict[str, Any]]:
    """The search space: ``tune.space`` (a YAML file) or the method's shipped file, then ``tune.params``."""
    given = cfg.tune.get("space")
    path = Path(str(given)).expanduser() if given else space_file(track, method)
    if not path.is_file():
        raise ConfigError(f"no search space for {method} on the {track} track ({path} does not exist); "
                          "pass tune.space=FILE (a YAML file with params:) or tune.params")
    params = _plain(OmegaConf.load(path).get("params"))
    extra = _plain(cfg.tune.get("params"))
    return parse_space({**params, **extra}, where=f"tune space {path.name}")


def _plain(node: Any) -> dict[str, Any]:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node or {})


def current_values(cfg: DictConfig, space: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The values the (preset-applied) config gives the space's keys: the default trial."""
    import dataclasses

    from transformers import TrainingArguments

    from obliviate.engine import build_trainer

    method_args = _plain(cfg.trainer.get("method_args"))
    trainer_cls, method = build_trainer(str(cfg.trainer.handler), method_args)
    method_cfg = method.cfg if method is not None else None
    arg_defaults = {f.name: f.default for f in dataclasses.fields(TrainingArguments)}
    out: dict[str, Any] = {}
    for key, spec in space.items():
        value = OmegaConf.select(cfg, key, default=None)
        if value is None and key.startswith("trainer.method_args.") and method_cfg is not None:
            value = getattr(method_cfg, key.rsplit(".", 1)[1], None)
        if value is None and key.startswith("trainer.args."):
            value = arg_defaults.get(key.rsplit(".", 1)[1])
        if value is None or isinstance(value, (dict, list)) or (dataclasses.is_dataclass(value)):
            continue
        if spec.get("log") and isinstance(value, (int, float)) and value <= 0:
            continue  # e.g. a retain weight of 0 in a log space: trial 0 samples it instead
        if spec["type"] == "int":
            if not isinstance(value, (int, float)) or float(value) != int(float(value)):
                continue  # e.g. 2.5 epochs: not a point of an int space, so trial 0 samples it
            value = int(float(value))
        elif spec["type"] == "float":
            value = float(value)
        elif value not in spec["choices"]:
            continue
        out[key] = value
    return out


# ----------------------------------------------------------------------------- output
def trial_records(study: Any) -> list[dict[str, Any]]:
    """tune.json's ``trials`` list (every trial but enqueued ones that never started)."""
    skip = interrupted_numbers(study)
    out = []
    for t in study.get_trials(deepcopy=False, states=_states()):
        seconds = t.user_attrs.get("seconds")
        if seconds is None and t.datetime_start is not None and t.datetime_complete is not None:
            seconds = (t.datetime_complete - t.datetime_start).total_seconds()
        rec: dict[str, Any] = {"number": t.number, "params": dict(t.params), "value": t.value, "state": t.state.name, "seconds": seconds,
                               "terms": t.user_attrs.get("terms"), "intermediate": {str(k): v for k, v in sorted(t.intermediate_values.items())}}
        for key in ("oracle", "error", "pruned", "status", "retry_of", "default"):
            if key in t.user_attrs:
                rec[key] = t.user_attrs[key]
        if t.number in skip:
            rec["interrupted"] = True
        out.append(rec)
    return out


def best_trial(study: Any) -> Any:
    """The complete trial with the lowest value (``None`` if none completed)."""
    import optuna

    done = [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)) if t.value is not None]
    return min(done, key=lambda t: (t.value, t.number)) if done else None


def ready_command(user_argv: list[str], params: dict[str, Any], method: str) -> str:
    """``obliviate unlearn <the user's overrides> <tuned values>`` (tune.* and the output dir dropped)."""
    drop = ("tune.", "paths.output_dir", "hydra.")
    keep = [a for a in user_argv if not a.split("=", 1)[0].lstrip("+~").startswith(drop) and a.split("=", 1)[0].lstrip("+~") not in params]
    args = [*keep, *as_overrides(params), f"paths.output_dir=outputs/tuned_{method}"]
    return "obliviate unlearn " + " ".join(quote(a) for a in args)


def run_tune(cfg: DictConfig, user_argv: list[str], run: Any = None) -> dict[str, Any] | None:
    """The ``obliviate tune`` job: search, then (main process) validate and write ``tune.json``.

    Args:
        cfg: The composed ``tune`` config.
        user_argv: The command line's overrides (worker processes get them; the ready command
            is built from them).
        run: The run's :class:`~obliviate.run.Run` (its manifest records the data files).

    Returns:
        The tune.json content (``None`` in a worker process).
    """
    from obliviate.methods import METHODS
    from obliviate.pipelines.common import apply_method_preset

    s = TuneSettings.from_cfg(cfg)
    track = track_of(cfg)
    method = METHODS.canonical(str(cfg.trainer.handler))
    if track not in (METHODS.meta(method).get("tracks") or (track,)):
        raise ConfigError(f"method {method} is not available for the {track} track; {track} methods: {', '.join(METHODS.names(tracks=track))}")
    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    space = load_space(cfg, track, method)
    base = apply_method_preset(copy.deepcopy(cfg), cfg.get("presets"), method, user_argv)
    defaults = current_values(base, space)
    problem = make_problem(track, base, out_dir, s)
    if run is not None:
        run.data_files.update(problem.data_files())
    identity = {"track": track, "method": method, "objective": s.objective, "space": space, "data": problem.identity()}
    with file_lock(out_dir / ".study.lock"):  # processes started together must not create the SQLite schema twice
        study = load_study(s, identity)
        recover_interrupted(study)
        if not study.trials:
            study.enqueue_trial(defaults, user_attrs={"default": True})
        procs = study.user_attrs.get("processes", [])  # who worked on the study: {"host", "pid", "role"}
        study.set_user_attr("processes", [*procs, {"host": socket.gethostname(), "pid": os.getpid(), "role": s.role}])
    if s.workers > 1 and s.role == "main":
        keep = [a for a in user_argv if not a.split("=", 1)[0].lstrip("+~").startswith(("tune.workers", "tune.role"))]
        spawn_workers("tune", s.workers, keep, out_dir, ["tune.workers=1", "tune.role=worker"])
    else:
        optimize(study, s, space, base, problem, out_dir)
    if s.role != "main":
        return None
    best = best_trial(study)
    best_params = dict(best.params) if best is not None else None
    result: dict[str, Any] = {
        "objective": s.objective, "track": track, "method": method, "direction": "minimize",
        "study": {"name": s.study_name, "storage": s.storage, "n_trials": s.n_trials},
        "space": space, "default_params": defaults, "best_params": best_params,
        "best_value": None if best is None else best.value, "best_trial": None if best is None else best.number,
        "best_command": None if best is None else ready_command(user_argv, best_params, method),
        "data": problem.identity(), "trials": trial_records(study),
    }
    result["validation"] = validate(problem, s, base, defaults, best_params, out_dir)
    if s.objective == "retrain_free":  # the objective of doing nothing (and of the retrained model, vision)
        result["reference_objectives"] = problem.reference_objectives()
    atomic_write_json(out_dir / "tune.json", result)
    print_summary(result, out_dir)
    return result


def make_problem(track: str, cfg: DictConfig, out_dir: Path, s: TuneSettings) -> Any:
    """The track's problem: data, the original model, the objective, trials and validation."""
    if track == "llm":
        from obliviate.pipelines.tune_llm import LLMProblem

        return LLMProblem(cfg, out_dir, s)
    from obliviate.pipelines.tune_vision import VisionProblem

    return VisionProblem(cfg, out_dir, s)


def validate(problem: Any, s: TuneSettings, base: DictConfig, defaults: dict[str, Any], best: dict[str, Any] | None,
             out_dir: Path) -> dict[str, Any]:
    """Full metrics of the preset (``default``) and the tuned configuration against the retrained model."""
    reason = problem.validation_unavailable(s.validate)
    if reason is not None:
        return {"default": None, "tuned": None, "skipped": reason}
    out: dict[str, Any] = {"against": problem.reference_name()}
    for name, values in (("default", defaults), ("tuned", best)):
        if values is None:
            out[name] = None
            continue
        if name == "tuned" and values == defaults:
            out[name] = {**out["default"], "same_as_default": True}
            continue
        vdir = out_dir / "validation" / name
        stamp = vdir / "params.json"
        if stamp.is_file() and (vdir / "metrics.json").is_file() and read_json(stamp) == values:
            res = read_json(vdir / "metrics.json")
        else:
            log.info("validating the %s configuration %s", name, values)
            vcfg = with_values(base, values)
            vdir.mkdir(parents=True, exist_ok=True)
            write_config(vcfg, vdir)
            res = problem.validate(vcfg, vdir)
            atomic_write_json(stamp, values)
        out[name] = {**problem.validation_metrics(res), "params": values, "run_dir": str(vdir)}
    return out


def print_summary(result: dict[str, Any], out_dir: Path) -> None:
    """Console summary: trials, best value and parameters, the ready command, validation."""
    states: dict[str, int] = {}
    for t in result["trials"]:
        states[t["state"].lower()] = states.get(t["state"].lower(), 0) + 1
    print(f"\ntune {result['method']} ({result['track']}), objective {result['objective']} (minimise): "
          + ", ".join(f"{v} {k}" for k, v in sorted(states.items())))
    default = next((t for t in result["trials"] if t.get("default")), None)
    if default is not None and default.get("value") is not None:
        print(f"preset (trial {default['number']}): {default['value']:.4g}  {default['params']}")
    if result["best_params"] is None:
        print("no trial completed")
    else:
        print(f"best (trial {result['best_trial']}): {result['best_value']:.4g}  {result['best_params']}\n\n  {result['best_command']}")
    val = result["validation"]
    if val.get("skipped"):
        print(f"\nvalidation skipped: {val['skipped']}")
    else:
        keys = VALIDATION_KEYS[result["track"]]
        print(f"\nvalidation against {val.get('against')}:")
        for name in ("default", "tuned"):
            if val.get(name):
                print(f"  {name:<8}" + "  ".join(f"{k}={val[name][k]:.4g}" for k in keys if isinstance(val[name].get(k), (int, float))))
    print(f"\ntune: {out_dir / 'tune.json'}")
