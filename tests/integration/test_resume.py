"""SIGKILL a real `obliviate unlearn` mid-run, resume it, and get the uninterrupted metrics."""

import json
import os
import signal
import subprocess
import time

import pytest

from tests.integration.test_vision_cli import OBLIVIATE, run

KEYS = ("UA", "RA", "TA", "MIA", "avg_gap")
# All 1,437 training images (the demo experiment keeps 10 per class) in RL's batches of 256: a forget
# pass (1 step) and a retain pass (6 steps) an epoch, 42 steps in all. Checkpoints every 4 steps and
# none rotated away: the test kills the run as soon as the first one is complete (the last one would
# be checkpoint-42), so the window does not depend on how fast the machine takes the steps between
# two saves (with rotation and batches of 8, checkpoint-12 lived ~30 ms and CI missed it).
FULL_DIGITS = "data.max_train_per_class=null"
LAST_STEP = 42


@pytest.fixture(scope="module")
def refs(tmp_path_factory):
    out = tmp_path_factory.mktemp("refs")
    run("train", "forget_class=9", FULL_DIGITS, f"paths.output_dir={out}", "train.args.num_train_epochs=8", cwd=out)
    return out


def _args(refs, out):
    return ["unlearn", "trainer=RL", "forget_class=9", FULL_DIGITS, f"paths.output_dir={out}",
            f"original_checkpoint={refs / 'original'}", f"retrain_checkpoint={refs / 'retrain'}",
            "trainer.args.num_train_epochs=6", "trainer.args.save_strategy=steps", "trainer.args.save_steps=4",
            "trainer.args.learning_rate=5e-4", "trainer.args.per_device_train_batch_size=256",
            "trainer.args.save_total_limit=null"]


def test_killed_run_resumes_to_the_same_metrics(refs, tmp_path):
    full = tmp_path / "full"
    run(*_args(refs, full), cwd=tmp_path)
    expected = json.loads((full / "metrics.json").read_text())["unlearned"]

    killed = tmp_path / "killed"
    proc = subprocess.Popen([OBLIVIATE, *_args(refs, killed)], cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    trainer_dir = killed / "unlearned" / "trainer"
    # complete = its trainer_state.json is written (the Trainer writes it last)
    first = trainer_dir / "checkpoint-4" / "trainer_state.json"
    deadline = time.time() + 300
    while not first.is_file() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert first.is_file(), "the run ended before it could be killed mid-training"
    assert not (trainer_dir / f"checkpoint-{LAST_STEP}").exists(), "killed after training had ended"
    assert not (killed / "metrics.json").exists()
    assert json.loads((killed / "manifest.json").read_text())["status"] == "running"  # SIGKILL: no chance to mark it

    run(*_args(refs, killed), "resume=true", cwd=tmp_path)
    got = json.loads((killed / "metrics.json").read_text())["unlearned"]
    for key in KEYS:
        assert got[key] == pytest.approx(expected[key], abs=1e-6), key
    assert json.loads((killed / "manifest.json").read_text())["status"] == "completed"


def test_diverging_run_is_stopped_and_marked(refs, tmp_path):
    out = tmp_path / "div"
    run("unlearn", "trainer=GA", "forget_class=9", f"paths.output_dir={out}", f"original_checkpoint={refs / 'original'}",
        f"retrain_checkpoint={refs / 'retrain'}", "trainer.args.learning_rate=1e6", "trainer.args.num_train_epochs=3",
        "trainer.args.max_grad_norm=0", cwd=tmp_path)
    m = json.loads((out / "metrics.json").read_text())
    assert m["status"] == "diverged" and m["divergence"]["reason"]
    assert json.loads((out / "manifest.json").read_text())["status"] == "diverged"
    # the saved weights are the last good ones: finite and still evaluable
    assert m["unlearned"]["RA"] is not None
