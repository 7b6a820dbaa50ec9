"""SIGKILL a real LLM `obliviate unlearn` mid-run, resume it, and get the uninterrupted metrics.

NPO on tiny-llama + synthetic TOFU (its reference log-probs are cached from the frozen copy of
the *original* model, which a resume must not take from the checkpoint), with TOFU evaluation
during training and at the end.
"""

import json
import os
import signal
import subprocess
import time

import pytest

from obliviate.cli import main
from tests.integration.test_llm_cli import OBLIVIATE


def _args(out, cache):
    return ["unlearn", "experiment=llm/tofu_synthetic", "trainer=NPO", f"paths.output_dir={out}", f"paths.cache_dir={cache}",
            "trainer.args.num_train_epochs=12", "trainer.args.save_strategy=steps", "trainer.args.save_steps=4",
            "trainer.args.learning_rate=1e-3", "eval=tofu", "eval.tofu.max_new_tokens=4", "eval_during_training.every_steps=4"]


def test_killed_llm_run_resumes_to_the_same_metrics(tmp_path):
    cache = tmp_path / "cache"
    full = tmp_path / "full"
    main(_args(full, cache))  # in process: one subprocess (the killed one) is enough
    expected = json.loads((full / "metrics.json").read_text())

    killed = tmp_path / "killed"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([OBLIVIATE, *_args(killed, cache)], cwd=tmp_path, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=env)
    target = killed / "trainer" / "checkpoint-8"
    deadline = time.time() + 300
    while not (target / "trainer_state.json").is_file() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert target.is_dir(), "the run ended before it could be killed mid-training"
    assert not (killed / "metrics.json").exists()
    assert json.loads((killed / "manifest.json").read_text())["status"] == "running"  # SIGKILL: no chance to mark it
    assert (target / "obliviate_guard.json").is_file()  # the divergence guard's reference retain loss

    main([*_args(killed, cache), "resume=true"])
    got = json.loads((killed / "metrics.json").read_text())
    for split in ("forget", "retain", "eval"):
        assert got["nll"]["after"][split] == pytest.approx(expected["nll"]["after"][split], abs=1e-6), split
    for key in ("forget_truth_ratio", "forget_Q_A_Prob", "retain_Q_A_Prob", "model_utility", "mia_min_k"):
        assert got[key] == pytest.approx(expected[key], abs=1e-6), key
    # the evaluations made before the kill are kept, those after the checkpoint redone once
    steps = [e["step"] for e in expected["eval_during_training"]]
    assert [e["step"] for e in got["eval_during_training"]] == steps == [4, 8, 12, 16, 20, 24]
    for a, b in zip(got["eval_during_training"], expected["eval_during_training"]):
        assert a["forget_Q_A_Prob"] == pytest.approx(b["forget_Q_A_Prob"], abs=1e-6)
    losses = [h["loss"] for h in expected["log_history"] if "loss" in h]
    assert [h["loss"] for h in got["log_history"] if "loss" in h] == pytest.approx(losses, abs=1e-6)
    assert json.loads((killed / "manifest.json").read_text())["status"] == "completed"
