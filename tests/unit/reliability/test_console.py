"""How commands end: one-line errors (exit 2), interrupts (exit 130, manifest `interrupted`),
missing optional dependencies naming the extra, and the run-dir summary."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from obliviate import console
from obliviate.cli import main
from obliviate.console import describe_files, guarded, interrupt_handler, raise_if_interrupted, run_summary
from obliviate.errors import MissingDependencyError
from obliviate.extras import OPTIONAL, require
from tests.unit.report.test_report import make_vision_run


@pytest.mark.parametrize("module", sorted(OPTIONAL))
def test_missing_optional_module_names_its_extra(module, monkeypatch):
    monkeypatch.setitem(sys.modules, module, None)  # import now raises ModuleNotFoundError
    with pytest.raises(MissingDependencyError) as exc:
        require(module)
    extra = OPTIONAL[module][0]
    assert f"pip install 'obliviate[{extra}]'" in str(exc.value) and "\n" not in str(exc.value)


def test_report_without_matplotlib_is_one_line_exit_2(tmp_path, monkeypatch, capsys):
    run = make_vision_run(tmp_path / "run")
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(SystemExit) as exc:
        main(["report", str(run), "-o", str(tmp_path / "r.html")])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and len(err.strip().splitlines()) == 1
    assert err.startswith("error:") and "pip install 'obliviate[report]'" in err and "Traceback" not in err
    assert not (tmp_path / "r.html").exists()  # nothing half written


def test_an_import_error_of_an_optional_module_anywhere_becomes_one_line(capsys):
    def job():
        raise ModuleNotFoundError("No module named 'gguf'", name="gguf")

    with pytest.raises(SystemExit) as exc:
        guarded(job)
    assert exc.value.code == 2 and "pip install 'obliviate[llm]'" in capsys.readouterr().err

    def other():
        raise ModuleNotFoundError("No module named 'numpyy'", name="numpyy")

    with pytest.raises(ModuleNotFoundError):  # not an optional dependency: a real bug, keeps its traceback
        guarded(other)


def test_signal_inside_a_finalizer_is_raised_at_the_next_check():
    class Finalized:
        def __del__(self):
            interrupt_handler(signal.SIGTERM, sys._getframe())  # a raise here would be "ignored" by Python

    console._PENDING.clear()
    obj = Finalized()
    del obj
    with pytest.raises(KeyboardInterrupt):
        raise_if_interrupted()
    console._PENDING.clear()
    with pytest.raises(KeyboardInterrupt):
        interrupt_handler(signal.SIGINT, sys._getframe())
    console._PENDING.clear()


def test_describe_files_is_compact():
    files = ["config.yaml", "manifest.json", "metrics.json", "eval/original.json", "eval/retrain.json", "eval/unlearned.json",
             "original/model.safetensors", "original/train_info.json", *(f"class_9/m{i}/metrics.json" for i in range(6))]
    assert describe_files(files) == ("config.yaml, manifest.json, metrics.json, eval/{original,retrain,unlearned}.json, "
                                     "original/{model.safetensors,train_info.json}, class_9/ (6 files)")


def test_run_summary_lists_results_not_scratch(tmp_path):
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "config.yaml").write_text("x")
    (tmp_path / "trainer" / "checkpoint-5").mkdir(parents=True)
    (tmp_path / "trainer" / "checkpoint-5" / "optimizer.pt").write_text("x")
    (tmp_path / "metrics.json").write_text("{}")
    text = run_summary(tmp_path, {"model": "m"})
    assert text.splitlines() == [f"run dir: {tmp_path}", "wrote:   metrics.json", "model:   m"]


@pytest.mark.parametrize("sig", [pytest.param(signal.SIGINT, marks=pytest.mark.slow), signal.SIGTERM])  # ~10 s each
def test_interrupt_prints_one_line_and_exits_130(sig, tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(__import__("obliviate").__path__[0].rsplit(os.sep, 1)[0]),
                                                         os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-m", "obliviate.cli", "unlearn", "trainer=GA", "forget_class=9", f"paths.output_dir={out}",
                             "train.args.num_train_epochs=500", "data.max_train_per_class=null"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)
    deadline = time.time() + 120
    while not (out / "manifest.json").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)  # the run has started (data, model, training)
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-2000:]
    assert "Traceback" not in stderr + stdout
    last = [line for line in stderr.replace("\r", "\n").splitlines() if line.strip()][-1]
    assert last == f"interrupted: resume with resume=true paths.output_dir={out}"
    assert json.loads((out / "manifest.json").read_text())["status"] == "interrupted"
