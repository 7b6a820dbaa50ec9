"""End to end on tiny-llama: the reference framework's MUSE and WMDP command lines with local data
(paths.muse=DIR / paths.wmdp=DIR in the benchmarks' layouts): train target + retrained models,
unlearn, evaluate (MUSE_EVAL.json, LMEval_SUMMARY.json), and a bad path failing in one line."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from obliviate.data.text.synthetic_bench import write_synthetic_muse, write_synthetic_wmdp

OBLIVIATE = shutil.which("obliviate", path=str(Path(sys.executable).parent)) or "obliviate"
TINY = ["model=tiny-llama"]
BLOCKS = ["data.forget.MUSE_forget.args.max_length=128", "data.retain.MUSE_retain.args.max_length=128"]
FAST_EVAL = ["eval.muse.verbmem.max_new_tokens=16", "eval.muse.knowmem_forget.max_new_tokens=8", "eval.muse.knowmem_retain.max_new_tokens=8"]


def run(*args, cwd, check=True):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OBLIVIATE_DEBUG": "", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([OBLIVIATE, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"obliviate {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    root = tmp_path_factory.mktemp("muse_wmdp")
    return root, write_synthetic_muse(root / "muse"), write_synthetic_muse(root / "muse_json", layout="muse_bench"), write_synthetic_wmdp(root / "wmdp")


@pytest.fixture(scope="module")
def muse_train(work):
    """`obliviate train experiment=unlearn/muse/default`: target (forget + retain1) and retrained (retain1) models."""
    root, muse, _, _ = work
    out = root / "train"
    run("train", "experiment=unlearn/muse/default", *TINY, "model.model_args.pretrained_model_name_or_path=null", f"paths.muse={muse}",
        f"paths.output_dir={out}", *BLOCKS, "data.full.MUSE_train.args.max_length=128", "train.args.learning_rate=3e-3",
        "train.args.num_train_epochs=15", "train.args.gradient_accumulation_steps=1", "train.args.per_device_train_batch_size=8",
        "train.args.lr_scheduler_type=constant", "train.args.warmup_epochs=0", *FAST_EVAL, cwd=root)
    return out


def test_muse_train_writes_both_models_and_scores_the_target_against_the_retrained_one(muse_train):
    metrics = json.loads((muse_train / "metrics.json").read_text())
    target, retain = metrics["stages"]["target"], metrics["stages"]["retain"]
    assert target["nll"]["forget"] < retain["nll"]["forget"]  # the target saw the forget documents
    for stage in ("target", "retain"):
        assert (muse_train / stage / "config.json").is_file() and (muse_train / "eval" / stage / "MUSE_EVAL.json").is_file()
    summary = json.loads((muse_train / "eval" / "target" / "MUSE_SUMMARY.json").read_text())
    assert set(summary) >= {"forget_verbmem_ROUGE", "forget_knowmem_ROUGE", "retain_knowmem_ROUGE", "privleak", "extraction_strength"}
    full = json.loads((muse_train / "eval" / "target" / "MUSE_EVAL.json").read_text())
    assert full["privleak"]["ref_source"] == "retain_logs"  # re-scored once the retrained model existed
    assert summary["privleak"] < -30  # memorised forget documents: strongly negative PrivLeak
    assert target["eval"]["muse"]["retain_logs_path"].endswith("eval/retain/MUSE_EVAL.json")


def test_muse_unlearn_graddiff_moves_forget_text_and_privleak_towards_the_retrained_model(muse_train, work):
    root, muse, _, _ = work
    out = root / "graddiff"
    run("unlearn", "experiment=unlearn/muse/default", *TINY, f"model.model_args.pretrained_model_name_or_path={muse_train / 'target'}",
        "trainer=GradDiff", f"paths.muse={muse}", f"paths.output_dir={out}", f"retain_logs_path={muse_train / 'eval' / 'retain'}", *BLOCKS,
        "trainer.args.learning_rate=1e-3", "+trainer.args.max_steps=10", "trainer.args.gradient_accumulation_steps=1", *FAST_EVAL, cwd=root)
    metrics = json.loads((out / "metrics.json").read_text())
    target = json.loads((muse_train / "eval" / "target" / "MUSE_SUMMARY.json").read_text())
    assert metrics["method"] == "GradDiff" and metrics["status"] == "completed"
    assert metrics["nll"]["delta"]["forget"] > metrics["nll"]["delta"]["retain"] > 0
    assert abs(metrics["privleak"]) < abs(target["privleak"])
    assert (out / "MUSE_EVAL.json").is_file() and metrics["eval"]["muse"]["n"]["privleak_forget"] == 6
    from obliviate.report.compare import compare

    table = compare([str(out)])  # `obliviate compare` shows the MUSE headline columns
    assert "VerbMem" in table and "KnowMem retain" in table and "PrivLeak" in table and "GradDiff" in table


def test_muse_eval_reads_muse_bench_json_layout(muse_train, work):
    root, _, muse_json, _ = work
    out = root / "eval"
    proc = run("eval", "experiment=eval/muse/default", *TINY, f"model.model_args.pretrained_model_name_or_path={muse_train / 'target'}",
               f"paths.muse={muse_json}", f"paths.output_dir={out}", f"retain_logs_path={muse_train / 'eval' / 'retain' / 'MUSE_EVAL.json'}",
               *FAST_EVAL, cwd=root)
    summary = json.loads((out / "MUSE_SUMMARY.json").read_text())
    target = json.loads((muse_train / "eval" / "target" / "MUSE_SUMMARY.json").read_text())
    assert summary == pytest.approx(target)  # the same data in muse_bench's <subset>/<split>.json layout, same numbers
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["command"] == "eval" and metrics["eval"]["muse"]["files"]["verbmem"].endswith("verbmem/forget.json")
    assert "privleak" in proc.stdout


def test_wmdp_rmu_unlearn_with_lm_eval_on_local_test_sets(work):
    pytest.importorskip("lm_eval")
    root, _, _, wmdp = work
    out = root / "rmu"
    run("unlearn", "experiment=unlearn/wmdp/default", *TINY, "model.model_args.pretrained_model_name_or_path=null", f"paths.wmdp={wmdp}",
        f"paths.mmlu={wmdp / 'mmlu'}", f"paths.output_dir={out}", "trainer.method_args.layer=1", "trainer.method_args.trainable_layers=[0,1]",
        "trainer.args.max_steps=3", "eval.lm_eval.tasks=[wmdp_cyber,mmlu_anatomy]", "eval.lm_eval.task_dirs=[wmdp,mmlu/default]", cwd=root)
    summary = json.loads((out / "LMEval_SUMMARY.json").read_text())
    assert set(summary) >= {"wmdp_cyber/acc", "mmlu_anatomy/acc"} and 0 <= summary["wmdp_cyber/acc"] <= 1
    logs = json.loads((out / "LMEval_EVAL.json").read_text())
    assert len(logs["wmdp_cyber"]["wmdp_cyber"]) == 4  # one log per local multiple-choice item
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["method"] == "RMU" and metrics["wmdp_cyber/acc"] == summary["wmdp_cyber/acc"]
    from obliviate.report.compare import compare

    assert "WMDP-cyber acc" in compare([str(out)])
    assert metrics["method_args"]["steering_coeff"] == 6.5 and metrics["method_args"]["param_regex"] == r"(^|\.)down_proj\.weight$"


def test_missing_local_muse_folder_fails_in_one_line(work):
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    from obliviate.errors import DataError
    from obliviate.pipelines.llm import check_sources, text_data_paths

    root = work[0]
    GlobalHydra.instance().clear()
    with initialize_config_module("obliviate.configs", version_base="1.3"):
        cfg = compose(config_name="unlearn", overrides=["experiment=unlearn/muse/default", *TINY, f"paths.muse={root / 'nope'}"])
    GlobalHydra.instance().clear()
    with pytest.raises(DataError, match=r"^data directory '.*nope' does not exist; pass paths.muse=DIR \(a folder in the hub's layout\) or a hub id$"):
        check_sources(cfg, text_data_paths(cfg))  # the CLI prints this one line and exits with status 2
