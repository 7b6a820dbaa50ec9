"""Trials of ``obliviate tune``: the Optuna study, the trial loop, intermediate values, resume.

- :func:`load_study` creates or loads the study (TPE sampler, median pruner) and refuses one made
  for another search;
- :func:`optimize` runs trials until the study holds ``tune.n_trials`` (counted under a file
  lock, so concurrent processes on one machine never overshoot);
- :class:`TrialReporter` reports intermediate objective values and prunes hopeless trials;
- :func:`recover_interrupted` marks trials of killed processes and enqueues their parameters again.
"""

from __future__ import annotations

import copy
import gc
import logging
import math
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from transformers import TrainerCallback

from obliviate.errors import ConfigError, ObliviateError
from obliviate.pipelines.study import file_lock, storage, suggest

log = logging.getLogger(__name__)


def with_values(base: DictConfig, values: dict[str, Any]) -> DictConfig:
    """A copy of ``base`` with the sampled values set (they win over the preset)."""
    cfg = copy.deepcopy(base)
    for key, value in values.items():
        OmegaConf.update(cfg, key, value, force_add=True, merge=False)
    return cfg


# ----------------------------------------------------------------------------- reporting
class TrialReporter(TrainerCallback):
    """Reports intermediate objective values to an Optuna trial and prunes hopeless trials.

    Args:
        trial: The Optuna trial (``None``: evaluate nothing during training).
        evaluate: ``model -> terms`` (the objective's terms, ``terms["objective"]`` the value).
        every_steps: Report every N optimizer steps (``None``: at each epoch end).
    """

    def __init__(self, trial: Any, evaluate: Callable[[Any], dict[str, Any]], every_steps: int | None = None) -> None:
        self.trial, self.evaluate, self.every_steps = trial, evaluate, every_steps
        self.last: tuple[int, dict[str, Any]] | None = None

    def _report(self, state: Any, model: Any) -> None:
        import optuna

        step = int(state.global_step)
        if self.trial is None or model is None or (self.last is not None and self.last[0] == step):
            return
        terms = self.evaluate(model)
        self.last = (step, terms)
        value = float(terms["objective"])
        if math.isfinite(value):
            self.trial.report(value, step)
            if self.trial.should_prune():
                raise optuna.TrialPruned(f"intermediate objective {value:.4g} at step {step}")

    def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        if self.every_steps and state.global_step % self.every_steps == 0:
            self._report(state, model)

    def on_epoch_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        if not self.every_steps:
            self._report(state, model)

    def cached(self, step: int) -> dict[str, Any] | None:
        """The terms reported at ``step`` (the final model's, when training ended there)."""
        return self.last[1] if self.last is not None and self.last[0] == step else None


# ----------------------------------------------------------------------------- study
def _states() -> tuple[Any, ...]:
    import optuna

    s = optuna.trial.TrialState
    return (s.COMPLETE, s.PRUNED, s.FAIL, s.RUNNING)


def interrupted_numbers(study: Any) -> set[int]:
    """Trials that were cut short by a kill (re-run with the same parameters)."""
    return {int(n) for n in study.user_attrs.get("interrupted_trials", [])}


def count_trials(study: Any) -> int:
    """Trials that count towards ``tune.n_trials``: complete, pruned, failed or running, minus interrupted ones."""
    skip = interrupted_numbers(study)
    return sum(t.number not in skip for t in study.get_trials(deepcopy=False, states=_states()))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def recover_interrupted(study: Any) -> list[int]:
    """Mark RUNNING trials of dead processes on this host as failed + interrupted, and enqueue
    their parameters again (call under the study lock). Returns their numbers."""
    import optuna

    host = socket.gethostname()
    found = []
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        pid = t.user_attrs.get("pid")
        if t.user_attrs.get("host") == host and pid and not _pid_alive(int(pid)):
            study.tell(t.number, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
            study.enqueue_trial(dict(t.params), user_attrs={"retry_of": t.number})
            found.append(t.number)
    if found:
        study.set_user_attr("interrupted_trials", sorted(interrupted_numbers(study) | set(found)))
        log.warning("trial(s) %s were interrupted (their process is gone); running them again", found)
    return found


def load_study(s: Any, identity: dict[str, Any]) -> Any:
    """Create or load the study; a study made for another method / objective / space is an error."""
    import optuna

    seed = None if s.seed is None else s.seed + (0 if s.role == "main" else os.getpid() % 9973)
    sampler = optuna.samplers.TPESampler(seed=seed)
    pruner = (optuna.pruners.MedianPruner(n_startup_trials=s.pruner_startup_trials, n_warmup_steps=s.pruner_warmup_steps)
              if s.pruner == "median" else optuna.pruners.NopPruner())
    study = optuna.create_study(study_name=s.study_name, storage=storage(s.storage), direction="minimize", sampler=sampler,
                                pruner=pruner, load_if_exists=True)
    earlier = len(study.get_trials(deepcopy=False))
    if seed is not None and earlier:
        # a resumed study: the seeded sampler would replay the first process's random draws
        # (its start-up trials are random), repeating trials the study already holds
        study.sampler = optuna.samplers.TPESampler(seed=seed + earlier)
    have = study.user_attrs.get("identity")
    if have is None:
        study.set_user_attr("identity", identity)
    elif have != identity:
        diff = sorted(k for k in set(have) | set(identity) if have.get(k) != identity.get(k))
        raise ConfigError(f"study '{s.study_name}' in {s.storage} was made for another search ({', '.join(diff)} differ); "
                          "choose another paths.output_dir or tune.study_name")
    return study


def optimize(study: Any, s: Any, space: dict[str, dict[str, Any]], base: DictConfig, problem: Any, out_dir: Path) -> int:
    """Run trials until the study holds ``n_trials`` (or the timeout); returns how many this process ran."""
    import optuna

    deadline = None if s.timeout_min is None else time.monotonic() + 60.0 * s.timeout_min
    lock, ran = out_dir / ".study.lock", 0
    while True:
        with file_lock(lock):
            if count_trials(study) >= s.n_trials or (deadline is not None and time.monotonic() > deadline):
                return ran
            trial = study.ask()
            trial.set_user_attr("host", socket.gethostname())
            trial.set_user_attr("pid", os.getpid())
        ran += 1
        values = suggest(trial, space)
        trial_dir = out_dir / "trials" / f"trial_{trial.number:04d}"
        reporter = TrialReporter(trial, problem.evaluate, s.report_every_steps)
        start = time.perf_counter()
        state, value = optuna.trial.TrialState.COMPLETE, None
        try:
            res = problem.run_trial(with_values(base, values), trial_dir, reporter)
            value = float(res["terms"]["objective"])
            trial.set_user_attr("terms", res["terms"])
            if res.get("oracle") is not None:
                trial.set_user_attr("oracle", res["oracle"])
            if res.get("status") and res["status"] != "completed":
                trial.set_user_attr("status", res["status"])
            if not math.isfinite(value):
                state, value = optuna.trial.TrialState.FAIL, None
                trial.set_user_attr("error", "the objective is not finite")
        except optuna.TrialPruned as exc:
            state = optuna.trial.TrialState.PRUNED
            trial.set_user_attr("pruned", str(exc))
        except KeyboardInterrupt:
            with file_lock(lock):
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
                study.enqueue_trial(dict(trial.params), user_attrs={"retry_of": trial.number})
                study.set_user_attr("interrupted_trials", sorted(interrupted_numbers(study) | {trial.number}))
            raise
        except (ObliviateError, RuntimeError, ValueError) as exc:
            state = optuna.trial.TrialState.FAIL
            trial.set_user_attr("error", f"{type(exc).__name__}: {exc}"[:500])
            log.warning("trial %d failed: %s", trial.number, exc)
        trial.set_user_attr("seconds", time.perf_counter() - start)
        study.tell(trial, value if state == optuna.trial.TrialState.COMPLETE else None, state=state)
        log.info("trial %d %s: %s -> %s", trial.number, state.name.lower(), values, value)
        gc.collect()
