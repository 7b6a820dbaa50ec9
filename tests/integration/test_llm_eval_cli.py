"""End-to-end: `obliviate eval` (TOFU metrics) and evaluation inside `obliviate unlearn`, on tiny-llama + synthetic TOFU.

Models are the random tiny-llama (different init seeds for "retain" and "evaluated"): the
wiring, files and schema are under test here, the metric values in tests/unit/metrics.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

OBLIVIATE = shutil.which("obliviate", path=str(Path(sys.executable).parent)) or "obliviate"
FAST = ["experiment=llm/tofu_synthetic", "eval.tofu.max_new_tokens=4"]


def run(*args, cwd):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OBLIVIATE_DEBUG": "", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([OBLIVIATE, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600, check=False)
    if proc.returncode != 0:
        raise AssertionError(f"obliviate {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n"
                             f"{proc.stderr[-3000:]}")
    return proc


def rows(path: Path) -> int:
    return sum(1 for line in path.read_text().splitlines() if line.strip())


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("llm_eval")


@pytest.fixture(scope="module")
def retain_eval(workdir):
    """`obliviate eval` of a "retain" model on forget01 / holdout01, no retain logs."""
    out = workdir / "retain_eval"
    proc = run("eval", *FAST, "forget_split=forget01", "holdout_split=holdout01", f"paths.output_dir={out}",
               f"paths.cache_dir={workdir / 'cache'}", cwd=workdir)
    return out, proc


def test_eval_writes_reference_schema_files(retain_eval, workdir):
    out, proc = retain_eval
    full = json.loads((out / "TOFU_EVAL.json").read_text())
    summary = json.loads((out / "TOFU_SUMMARY.json").read_text())
    for key in ("forget_Q_A_Prob", "forget_Q_A_PARA_Prob", "forget_Q_A_PERT_Prob", "forget_Q_A_ROUGE", "forget_truth_ratio",
                "retain_Q_A_Prob", "retain_Q_A_ROUGE", "retain_Truth_Ratio", "ra_Q_A_Prob_normalised", "ra_Q_A_ROUGE",
                "ra_Truth_Ratio", "wf_Q_A_Prob_normalised", "wf_Q_A_ROUGE", "wf_Truth_Ratio", "extraction_strength",
                "exact_memorization", "mia_loss", "mia_zlib", "mia_min_k", "mia_min_k_plus_plus", "forget_quality", "privleak",
                "model_utility"):
        assert key in full and key in summary, key
    assert set(summary) == set(full)
    for key, entry in full.items():
        assert "agg_value" in entry, key
        if "value_by_index" in entry:
            assert all("score" in v for v in entry["value_by_index"].values()), key
    # forget_split / holdout_split select the files: per-sample entries = rows of those files
    data = workdir / "cache" / "synthetic_tofu" / "a20_q4_s0"
    assert len(full["forget_Q_A_Prob"]["value_by_index"]) == rows(data / "forget01_perturbed.json") == 4
    assert len(full["mia_min_k"]["holdout"]["value_by_index"]) == rows(data / "holdout01.json") == 4
    assert len(full["retain_Q_A_Prob"]["value_by_index"]) == rows(data / "retain_perturbed.json")
    assert len(full["ra_Q_A_Prob"]["value_by_index"]) == rows(data / "real_authors_perturbed.json")
    assert len(full["wf_Q_A_Prob"]["value_by_index"]) == rows(data / "world_facts_perturbed.json")
    assert set(full["forget_Q_A_ROUGE"]["value_by_index"]["0"]) >= {"score", "generation", "ground_truth"}
    # no retain logs: a warning, no crash, forget_quality null
    assert full["forget_quality"]["agg_value"] is None and summary["forget_quality"] is None
    assert "forget_quality skipped" in proc.stdout + proc.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["track"] == "llm" and metrics["command"] == "eval" and metrics["status"] == "completed"
    assert metrics["eval"]["tofu"]["forget_split"] == "forget01" and metrics["eval"]["tofu"]["n"]["forget"] == 4
    assert metrics["model_utility"] == pytest.approx(summary["model_utility"]) and "forget_truth_ratio" in metrics
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["command"] == "eval" and manifest["status"] == "completed"
    assert manifest["data_files"]["eval.tofu.forget"]["path"].endswith("forget01_perturbed.json")


def test_retain_logs_give_forget_quality_and_compare_reads_it(retain_eval, workdir):
    out = workdir / "eval_seed1"
    run("eval", *FAST, "forget_split=forget01", "holdout_split=holdout01", "model.config_args.init_seed=1",
        f"retain_logs_path={retain_eval[0] / 'TOFU_EVAL.json'}", f"paths.output_dir={out}",
        f"paths.cache_dir={workdir / 'cache'}", cwd=workdir)
    summary = json.loads((out / "TOFU_SUMMARY.json").read_text())
    assert 0.0 <= summary["forget_quality"] <= 1.0
    full = json.loads((out / "TOFU_EVAL.json").read_text())
    assert full["forget_quality"]["n"] == full["forget_quality"]["n_retain"] == 4
    assert full["privleak"]["ref_source"] == "retain_logs"
    table = run("compare", str(retain_eval[0]), str(out), cwd=workdir).stdout
    assert "Forget quality" in table and "Model utility" in table and "eval_seed1" in table
    assert f"{summary['forget_quality']:.4f}" in table
    report = run("report", str(retain_eval[0]), str(out), "-o", str(workdir / "r.html"), cwd=workdir)
    assert "r.html" in report.stdout and "Forget quality" in (workdir / "r.html").read_text()


def test_unlearn_evaluates_at_the_end_and_during_training(workdir):
    out = workdir / "unlearn"
    run("unlearn", *FAST, "trainer=GradAscent", "eval=tofu", "eval_during_training.every_steps=2",
        "eval_during_training.generate=false", "trainer.args.num_train_epochs=2", f"paths.output_dir={out}",
        f"paths.cache_dir={workdir / 'cache'}", cwd=workdir)
    full = json.loads((out / "TOFU_EVAL.json").read_text())
    assert len(full["forget_Q_A_Prob"]["value_by_index"]) == 8  # default forget10 (2 authors x 4 QA)
    assert (out / "TOFU_SUMMARY.json").is_file()
    # forget10: 8 pairs, batch 4 -> 2 steps per epoch, 4 in all
    for step in (2, 4):
        step_summary = json.loads((out / "eval" / f"step_{step}" / "TOFU_SUMMARY.json").read_text())
        assert "forget_truth_ratio" in step_summary and "forget_Q_A_ROUGE" not in step_summary  # generate=false
    metrics = json.loads((out / "metrics.json").read_text())
    assert [h["step"] for h in metrics["eval_during_training"]] == [2, 4]
    assert metrics["eval"]["tofu"]["n"]["forget"] == 8 and "forget_truth_ratio" in metrics


def test_train_writes_the_retain_models_tofu_eval(workdir):
    out = workdir / "train"
    run("train", *FAST, "eval=tofu", "train.args.max_steps=2", f"paths.output_dir={out}", f"paths.cache_dir={workdir / 'cache'}",
        cwd=workdir)
    retain = json.loads((out / "eval" / "retain" / "TOFU_EVAL.json").read_text())
    assert len(retain["forget_truth_ratio"]["value_by_index"]) == 8
    # the target model is scored against the retain model trained after it
    target = json.loads((out / "eval" / "target" / "TOFU_SUMMARY.json").read_text())
    assert 0.0 <= target["forget_quality"] <= 1.0
    metrics = json.loads((out / "metrics.json").read_text())
    info = metrics["stages"]["target"]["eval"]["tofu"]
    assert info["summary"]["forget_quality"] == pytest.approx(target["forget_quality"])
    assert info["retain_logs_path"].endswith("retain/TOFU_EVAL.json") and not any("forget_quality" in w for w in info["warnings"])
