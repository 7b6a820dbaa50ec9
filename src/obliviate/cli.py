"""The ``obliviate`` command: Hydra sub-commands over the Python API.

``obliviate <command> key=value ...`` composes ``configs/<command>.yaml`` (packaged with the
wheel, so it works from any directory); ``--help``, ``--cfg job``, ``--config-name``,
``-m`` behave as in any Hydra app. User errors print one line and exit with status 2,
Ctrl-C / SIGTERM one line and status 130 (``OBLIVIATE_DEBUG=1`` shows the traceback; see
:mod:`obliviate.console`). Every run command ends by printing its run directory and what it
wrote; default run directories are named by :mod:`obliviate.rundirs`.
"""

from __future__ import annotations

import difflib
import logging
import os
import sys
from pathlib import Path
from typing import Callable

from omegaconf import DictConfig, OmegaConf

from obliviate.console import guarded, run_summary
from obliviate.errors import ObliviateError

log = logging.getLogger("obliviate")

COMMANDS: dict[str, str] = {
    "train": "train the original model and the retrained gold-standard model",
    "unlearn": "unlearn a forget set, evaluate against original and retrained models",
    "quickstart": "embedded demo: every vision method on digits; track=llm: GradDiff/NPO on tiny-llama (no downloads)",
    "eval": "evaluate an LLM: eval=tofu (TOFU_EVAL.json), eval=muse (MUSE_EVAL.json), eval=lm_eval (WMDP/MMLU), metrics.json",
    "prune": "prune a model (OMP/IMP; LoRAPrune, unlearning_prune on LLMs and CNNs): params, latency, forget/retain before and after",
    "sweep": "Optuna search over a method's hyper-parameters (configs/sweep/<name>.yaml)",
    "tune": "retrain-free Optuna search for one method (unlearn's overrides + tune.n_trials=N): tune.json, best command",
    "report": "RUN_DIR ... [-o FILE]: self-contained HTML report with plots and tables",
    "compare": "RUN_DIR ... [--csv] [-o FILE]: table of headline metrics over runs",
}

USAGE = "usage: obliviate <command> [key=value ...] [--help] [--cfg job]\n\ncommands:\n" + "\n".join(
    f"  {name:<11} {text}" for name, text in COMMANDS.items()
) + "\n\nRun 'obliviate <command> --help' for the command's configuration groups."


def _user_overrides() -> list[str]:
    from hydra.core.hydra_config import HydraConfig

    try:
        return list(HydraConfig.get().overrides.task)
    except ValueError:
        return []


def _prepare(cfg: DictConfig) -> tuple[DictConfig, Path]:
    """Apply the experiment's method preset and create the run dir (Run writes config.yaml)."""
    from obliviate.pipelines.common import apply_method_preset

    cfg = apply_method_preset(cfg, cfg.get("presets"), cfg.trainer.handler, _user_overrides())
    run_dir = Path(cfg.paths.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    return cfg, run_dir


def _run(run_dir: Path, cfg: DictConfig, command: str):
    """The run's manifest context (status, versions, hashes); see :class:`obliviate.run.Run`."""
    from obliviate.run import Run

    return Run(run_dir, cfg, command, overwrite=bool(cfg.get("overwrite")), resume=bool(cfg.get("resume")))


def _track(cfg: DictConfig) -> str:
    model = cfg.get("model")  # the sweep config has no model
    return "vision" if model is None else str(model.get("track", "vision"))


def _llm_job(cfg: DictConfig, command: str) -> None:
    """``train`` / ``unlearn`` for models with ``track: llm`` (see :mod:`obliviate.pipelines.llm`)."""
    from obliviate.errors import ConfigError
    from obliviate.pipelines import llm
    from obliviate.report.table import format_table

    if cfg.data.get("forget") is None and cfg.data.get("full") is None:
        raise ConfigError(f"model '{cfg.model.get('builder')}' has track llm but the vision data defaults were composed; "
                          "add `defaults: [override /track@_global_.track: llm]` to its model config or pass track=llm")
    cfg, run_dir = _prepare(cfg)
    with _run(run_dir, cfg, command) as run:
        res = (llm.run_train if command == "train" else llm.run_unlearning)(cfg, run_dir, run=run)
        run.status = res["status"]
    rows = llm.train_rows(res) if command == "train" else llm.unlearn_rows(res)
    print(format_table(rows, llm.NLL_COLUMNS, digits=4))
    if res.get("eval"):  # eval=tofu: the unlearned model's TOFU headline (TOFU_SUMMARY.json)
        from obliviate.pipelines.llm_eval import EVAL_COLUMNS, eval_rows

        print("\n" + format_table(eval_rows(res), EVAL_COLUMNS, digits=4))
    models = {s: info.get("dir") for s, info in res.get("stages", {}).items()} if command == "train" else {"model": res.get("model_dir")}
    print("\n" + run_summary(run_dir, models))


def cmd_train(cfg: DictConfig) -> None:
    """Train original + retrained models and write their metrics."""
    from obliviate.io import atomic_write_json
    from obliviate.pipelines import vision
    from obliviate.pipelines.common import forget_selection

    if _track(cfg) == "llm":
        return _llm_job(cfg, "train")
    cfg, run_dir = _prepare(cfg)
    with _run(run_dir, cfg, "train"):
        data = vision.load_data(cfg)
        split = vision.split_forget(data, forget_selection(cfg), int(cfg.seed))
        refs = vision.obtain_reference_models(cfg, data, split, run_dir)
        out = {}
        for stage in ("original", "retrain"):
            metrics, per_sample = vision.evaluate(refs[stage], split, data.test, data.num_classes, int(cfg.seed))
            out[stage] = {**metrics, "train_time_s": refs[f"{stage}_time_s"]}
            atomic_write_json(run_dir / "eval" / f"{stage}.json", per_sample)
        atomic_write_json(run_dir / "metrics.json", {"track": "vision", "status": "completed", "forget": forget_selection(cfg), **out})
    from obliviate.pipelines.quickstart import COLUMNS
    from obliviate.report.table import format_table

    print(format_table([{"method": s, **out[s], "rte_s": out[s]["train_time_s"]} for s in out], COLUMNS))
    print("\n" + run_summary(run_dir, {"reuse": f"original_checkpoint={run_dir / 'original'} retrain_checkpoint={run_dir / 'retrain'}"}))


def cmd_unlearn(cfg: DictConfig) -> None:
    """One unlearning run; prints the original / unlearned / retrain rows."""
    from obliviate.pipelines import vision
    from obliviate.pipelines.quickstart import COLUMNS
    from obliviate.report.table import format_table

    if _track(cfg) == "llm":
        return _llm_job(cfg, "unlearn")
    cfg, run_dir = _prepare(cfg)
    with _run(run_dir, cfg, "unlearn") as run:
        res = vision.run_unlearning(cfg, run_dir)
        run.data_files.update(res["data_files"])
        run.status = res["status"]
        if res["status"] == "diverged":
            log.warning("the run diverged: %s", res["divergence"]["reason"])
    from obliviate.distributed import is_main_process

    if not is_main_process():  # accelerate/torchrun: the table is printed once, by rank 0
        return
    rows = [
        {"method": "original", **res["original"]},
        *([{"method": "pruned", **res["pruned"]}] if "pruned" in res else []),  # pruning=omp|imp|mask
        {"method": res["method"], **res["unlearned"]},
        {"method": "retrain", **res["retrain"], "avg_gap": 0.0, "rte_s": res["retrain"].get("train_time_s")},
    ]
    print(format_table(rows, COLUMNS))
    if "pruning" in res:
        sp = res["sparsity"]
        print(f"\nsparsity (measured): {100 * sp['before_unlearning']:.2f}% before unlearning, {100 * sp['after_unlearning']:.2f}% after")
    print("\n" + run_summary(run_dir))


def cmd_eval(cfg: DictConfig) -> None:
    """TOFU evaluation of the configured LLM (see :mod:`obliviate.pipelines.llm_eval`)."""
    from obliviate.errors import ConfigError
    from obliviate.pipelines import llm_eval
    from obliviate.report.table import format_table

    if _track(cfg) != "llm":
        raise ConfigError(f"obliviate eval needs an LLM (track llm), got model track '{_track(cfg)}'; e.g. model=tiny-llama")
    run_dir = Path(cfg.paths.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    with _run(run_dir, cfg, "eval") as run:
        res = llm_eval.run_eval(cfg, run_dir, run=run)
        run.status = res["status"]
    print(format_table(llm_eval.eval_rows(res), llm_eval.EVAL_COLUMNS, digits=4))
    print("\n" + run_summary(run_dir))


def cmd_quickstart(cfg: DictConfig) -> None:
    """The embedded default demo."""
    from hydra import compose

    from obliviate.pipelines.common import apply_method_preset
    from obliviate.pipelines.quickstart import SELECTION_KEYS, run_quickstart

    overrides = _user_overrides()
    run_dir = Path(cfg.paths.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if _track(cfg) == "llm":  # track=llm: tiny-llama on synthetic authors (obliviate.pipelines.quickstart_llm)
        from obliviate.errors import ConfigError
        from obliviate.pipelines.quickstart_llm import compose_unlearn, run_quickstart_llm

        if cfg.data.get("full") is None:
            raise ConfigError("the LLM quickstart is `obliviate quickstart track=llm` (experiment llm/quickstart); "
                              f"model '{cfg.model.get('builder')}' alone composes the vision data")

        with _run(run_dir, cfg, "quickstart") as run:
            res = run_quickstart_llm(cfg, run_dir, lambda method, extra: compose_unlearn(compose, method, overrides, extra))
            run.status = res["status"]
        print("\n" + run_summary(run_dir))
        return

    def compose_method(method: str, selection: dict) -> DictConfig:
        kept = [o for o in overrides if not o.split("=", 1)[0].lstrip("+~").startswith(("trainer", "quickstart", *SELECTION_KEYS))]
        sel = [f"{k}={v}" for k, v in selection.items()]
        sub = compose(config_name="unlearn", overrides=[*kept, f"trainer={method}", *sel])
        return apply_method_preset(sub, sub.get("presets"), method, overrides)

    with _run(run_dir, cfg, "quickstart"):
        run_quickstart(cfg, run_dir, compose_method)
    print("\n" + run_summary(run_dir))


def cmd_prune(cfg: DictConfig) -> None:
    """Train/load the original model, prune it (OMP/IMP), save model + mask, print accuracy and sparsity."""
    from obliviate.pipelines.prune import run_prune, sparsity_table

    run_dir = Path(cfg.paths.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if _track(cfg) == "llm":  # pruning=loraprune|unlearning_prune (obliviate.pipelines.prune_llm)
        from obliviate.pipelines.prune_llm import prune_summary, run_prune_llm

        with _run(run_dir, cfg, "prune"):
            res = run_prune_llm(cfg, run_dir)
        print(f"{prune_summary(res)}\n\n{run_summary(run_dir, {'model': res.get('model_dir')})}")
        return
    with _run(run_dir, cfg, "prune"):
        res = run_prune(cfg, run_dir)
    print(sparsity_table(res))
    print("\n" + run_summary(run_dir, {"model": res["model_file"], "mask": res["pruning"].get("mask_file")}))


def cmd_sweep(cfg: DictConfig) -> None:
    """Optuna search; each trial runs the ``sweep.command`` job in process (see :mod:`obliviate.pipelines.sweep`)."""
    from hydra import compose

    from obliviate.pipelines.sweep import run_sweep

    run_sweep(cfg, lambda name, overrides: compose(config_name=name, overrides=overrides), _user_overrides())
    if cfg.sweep.get("print_best", True):  # the main process (workers report to it)
        print("\n" + run_summary(cfg.paths.output_dir))


def cmd_tune(cfg: DictConfig) -> None:
    """Retrain-free hyper-parameter search (see :mod:`obliviate.pipelines.tune`)."""
    from obliviate.pipelines.tune import run_tune
    from obliviate.run import Run

    run_dir = Path(cfg.paths.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if cfg.tune.get("role") == "worker":  # spawned by tune.workers: trials only
        run_tune(cfg, _user_overrides())
        return
    with Run(run_dir, cfg, "tune", resume=True) as run:  # rerunning continues the study (never "already completed")
        run_tune(cfg, _user_overrides(), run=run)


def cmd_report(args: list[str]) -> None:
    """``obliviate report RUN_DIR [RUN_DIR ...] [-o FILE]`` (argparse: positional run dirs)."""
    import argparse

    from obliviate.report.html import write_report

    parser = argparse.ArgumentParser(prog="obliviate report", description="Self-contained HTML report (plots + tables) of run dirs "
                                     "or quickstart dirs.")
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run dir (metrics.json) or quickstart dir (summary.json)")
    parser.add_argument("-o", "--output", help="HTML file to write (default: RUN_DIR/report.html of the first dir)")
    ns = parser.parse_args(args)
    print(f"report: {write_report(ns.run_dirs, ns.output)}")


def cmd_compare(args: list[str]) -> None:
    """``obliviate compare RUN_DIR ... [--csv] [-o FILE]``: headline metrics table."""
    import argparse

    from obliviate.io import atomic_write_text
    from obliviate.report.compare import compare

    parser = argparse.ArgumentParser(prog="obliviate compare", description="Table of headline metrics over run dirs or quickstart dirs.")
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run dir (metrics.json) or quickstart dir (summary.json)")
    parser.add_argument("--csv", action="store_true", help="CSV instead of a markdown table")
    parser.add_argument("-o", "--output", help="also write the table to this file")
    ns = parser.parse_args(args)
    text = compare(ns.run_dirs, fmt="csv" if ns.csv else "markdown")
    print(text, end="")
    if ns.output:
        atomic_write_text(ns.output, text)
        print(f"wrote: {ns.output}", file=sys.stderr)  # stdout stays the table alone (pipes)


HANDLERS: dict[str, Callable[[DictConfig], None]] = {"train": cmd_train, "unlearn": cmd_unlearn, "eval": cmd_eval,
                                                     "quickstart": cmd_quickstart, "prune": cmd_prune, "sweep": cmd_sweep,
                                                     "tune": cmd_tune}
# Commands that take positional arguments (argparse, not Hydra).
PLAIN_COMMANDS: dict[str, Callable[[list[str]], None]] = {"report": cmd_report, "compare": cmd_compare}


def _run_hydra(command: str, args: list[str]) -> None:
    import hydra

    handler = HANDLERS[command]

    def task(cfg: DictConfig) -> None:
        from obliviate.rundirs import pin_run_dir

        guarded(lambda: handler(pin_run_dir(cfg)), lambda: cfg.paths.output_dir)

    task.__name__ = command
    if command == "quickstart" and "track=llm" in args and not any(a.startswith("experiment=") for a in args):
        args = ["experiment=llm/quickstart", *args]  # Hydra allows its model/data overrides only in a non-interpolated default
    sys.argv = [f"obliviate {command}", *args]
    from obliviate.rundirs import new_invocation

    new_invocation()  # one time stamp per command for default run dirs that are taken
    hydra.main(config_path="configs", config_name=command, version_base="1.3")(task)()


def check_group_choices(args: list[str]) -> None:
    """Reject ``group=option`` overrides naming a config that does not exist, with close matches.

    Hydra's own message lists every option; ours names the closest ones and the fix.
    """
    from obliviate.errors import UnknownNameError

    config_dir = Path(__file__).parent / "configs"
    for arg in args:
        if arg.startswith(("-", "+", "~")) or "=" not in arg:
            continue
        group, value = arg.split("=", 1)
        group_dir = config_dir / group
        if "." in group or not group_dir.is_dir() or value in ("null", ""):
            continue
        options = sorted(str(p.relative_to(group_dir).with_suffix("")) for p in group_dir.rglob("*.yaml"))
        if value not in options and value.removesuffix(".yaml") not in options:  # Hydra takes `experiment=unlearn/muse/default.yaml` too
            close = difflib.get_close_matches(value, options, n=3, cutoff=0.4)
            lowered = [o for o in options if o.lower() == value.lower()]
            hint = f" Did you mean: {', '.join(dict.fromkeys(lowered + close))}?" if (lowered or close) else ""
            raise UnknownNameError(f"unknown {group} '{value}'.{hint} Available: {', '.join(options)}")


def main(argv: list[str] | None = None) -> None:
    """Console entry point."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return
    command, rest = argv[0], argv[1:]
    if command in PLAIN_COMMANDS:
        guarded(lambda: PLAIN_COMMANDS[command](rest))
        return
    if command not in HANDLERS:
        close = difflib.get_close_matches(command, [*HANDLERS, *PLAIN_COMMANDS], n=2)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        print(f"error: unknown command '{command}'.{hint}\n\n{USAGE}", file=sys.stderr)
        sys.exit(2)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        check_group_choices(rest)
    except ObliviateError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    _run_hydra(command, rest)


if __name__ == "__main__":
    main()
