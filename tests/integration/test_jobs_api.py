"""The Python API behind the CLI (obliviate.jobs): every command is a function a user calls with
a composed config; the CLI only parses, calls it and prints. On digits (seconds per job)."""

from __future__ import annotations

import ast
import inspect
import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from obliviate import cli, jobs
from obliviate.errors import ConfigError

FAST = ["experiment=vision/digits", "forget_class=9", "train.args.num_train_epochs=6", "+train.args.disable_tqdm=true"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("api") / "train"
    res = jobs.train(jobs.compose("train", [*FAST, f"paths.output_dir={out}"]))
    return out, res


def test_train_returns_what_it_wrote(trained):
    out, res = trained
    assert res["run_dir"] == str(out) and res["track"] == "vision"
    written = json.loads((out / "metrics.json").read_text())
    assert {k: written[k]["UA"] for k in ("original", "retrain")} == {k: res[k]["UA"] for k in ("original", "retrain")}
    assert res["retrain"]["UA"] > 95 > res["original"]["UA"]  # the retrained model never saw class 9
    assert json.loads((out / "manifest.json").read_text())["status"] == "completed"


def test_unlearn_applies_the_preset_but_never_over_the_users_keys(trained):
    out, _ = trained
    base = [*FAST, f"original_checkpoint={out / 'original'}", f"retrain_checkpoint={out / 'retrain'}", "trainer=SCRUB"]
    preset_run = out.parent / "scrub_preset"
    cfg = jobs.compose("unlearn", [*base, f"paths.output_dir={preset_run}"])
    preset_lr, default_lr = float(cfg.presets.SCRUB.args.learning_rate), float(cfg.trainer.args.learning_rate)
    res = jobs.unlearn(cfg, [*base, f"paths.output_dir={preset_run}"])
    assert res["method"] == "SCRUB" and res["unlearned"]["UA"] > res["original"]["UA"]  # it forgets
    assert json.loads((preset_run / "manifest.json").read_text())["status"] == "completed"
    assert float(OmegaConf.load(preset_run / "config.yaml").trainer.args.learning_rate) == preset_lr != default_lr
    mine = [*base, "trainer.args.learning_rate=0.0", f"paths.output_dir={out.parent / 'scrub_mine'}"]
    res = jobs.unlearn(jobs.compose("unlearn", mine), mine)  # the user's lr=0 wins over the preset: nothing moves
    assert res["unlearned"]["UA"] == pytest.approx(res["original"]["UA"])


def test_compare_and_report(trained, tmp_path):
    out, res = trained
    table = jobs.compare([out])
    assert table.startswith("| run") and f"{res['original']['UA']:.2f}" in table  # the train run's original row
    page = jobs.report([out], tmp_path / "r.html")
    assert page.is_file() and page.read_text().startswith("<!DOCTYPE html>")


def test_evaluate_refuses_a_vision_model_in_one_line(tmp_path):
    with pytest.raises(ConfigError, match="needs an LLM"):
        jobs.evaluate(jobs.compose("eval", ["model=resnet18_cifar", f"paths.output_dir={tmp_path}"]))


def test_every_cli_command_is_a_call_into_jobs():
    """Each command handler of cli.py calls the jobs function of its command (no job logic in the CLI)."""
    expected = {"train": "train", "unlearn": "unlearn", "eval": "evaluate", "quickstart": "quickstart", "prune": "prune",
                "sweep": "sweep", "tune": "tune", "report": "report", "compare": "compare"}
    handlers = {**cli.HANDLERS, **cli.PLAIN_COMMANDS}
    assert set(handlers) == set(expected)
    for command, fn in handlers.items():
        tree = ast.parse(inspect.getsource(fn))
        calls = {n.func.attr for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
                 and isinstance(n.func.value, ast.Name) and n.func.value.id == "jobs"}
        assert expected[command] in calls, f"cli.{fn.__name__} does not call jobs.{expected[command]}"
        assert hasattr(jobs, expected[command]) and expected[command] in jobs.__all__
        # the CLI never reaches a pipeline's run_* job itself
        runs = {n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id.startswith("run_") and n.func.id != "run_summary"}
        assert not runs, f"cli.{fn.__name__} runs {runs} itself"


def test_compose_outside_and_inside_hydra_gives_the_same_config():
    a = jobs.compose("unlearn", FAST)
    from hydra import initialize_config_module

    with initialize_config_module(config_module="obliviate.configs", version_base="1.3"):
        b = jobs.compose("unlearn", FAST)
    assert a.trainer.handler == b.trainer.handler and a.data == b.data and Path(a.paths.output_dir).parent == Path(b.paths.output_dir).parent
