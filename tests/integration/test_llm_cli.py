"""End-to-end: `obliviate train` then `obliviate unlearn` on tiny-llama + synthetic TOFU data."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

OBLIVIATE = shutil.which("obliviate", path=str(Path(sys.executable).parent)) or "obliviate"
SEED_001 = ["--config-name=unlearn.yaml", "model=tiny-llama", "trainer=GradDiff", "trainer.method_args.alpha=0.5",
            "data.forget=TOFU_QA_FORGET10", "data.retain=TOFU_QA_RETAIN90", "data.eval=TOFU_QA_FORGET10_P",
            "collator=DataCollatorForSupervisedDataset"]


def run(*args, cwd, check=True):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OBLIVIATE_DEBUG": "", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([OBLIVIATE, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"obliviate {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("llm")


@pytest.fixture(scope="module")
def trained(workdir):
    """The target model: tiny-llama fine-tuned on the synthetic `full` split (20 authors x 4 QA)."""
    out = workdir / "train"
    run("train", "experiment=llm/tofu_synthetic", f"paths.output_dir={out}", f"paths.cache_dir={workdir / 'cache'}",
        "train.stages=[target]", "train.args.num_train_epochs=15", cwd=workdir)
    return out


def test_train_memorises_the_target_data(trained):
    m = json.loads((trained / "metrics.json").read_text())
    target = m["stages"]["target"]
    assert list(m["stages"]) == ["target"] and target["n_train"] == 80
    assert m["data"]["forget"]["n"] == 8 and m["data"]["retain"]["n"] == 72
    # random init: answer NLL ~ ln(261 tokens) = 5.56; after fine-tuning far lower on both splits
    assert 5.0 < m["initial"]["nll"]["forget"] < 6.2
    assert target["nll"]["forget"] < 1.0 and target["nll"]["retain"] < 1.0
    assert (trained / "target" / "model.safetensors").is_file() and (trained / "target" / "tokenizer.json").is_file()
    assert json.loads((trained / "manifest.json").read_text())["status"] == "completed"


def test_graddiff_raises_forget_nll_more_than_retain_nll(trained, workdir):
    out = workdir / "unlearn"
    proc = run("unlearn", "experiment=llm/tofu_synthetic", "trainer=GradDiff", f"paths.output_dir={out}",
               f"paths.cache_dir={workdir / 'cache'}", f"model.model_args.pretrained_model_name_or_path={trained / 'target'}", cwd=workdir)
    assert "after GradDiff" in proc.stdout
    m = json.loads((out / "metrics.json").read_text())
    target = json.loads((trained / "metrics.json").read_text())["stages"]["target"]["nll"]
    before, after, delta = m["nll"]["before"], m["nll"]["after"], m["nll"]["delta"]
    # the saved target model reloads exactly: same NLL as measured at the end of training
    for split in ("forget", "retain", "eval"):
        assert before[split] == pytest.approx(target[split], abs=1e-4)
    assert delta["forget"] == pytest.approx(after["forget"] - before["forget"])
    assert delta["forget"] > 1.0 and delta["forget"] > 2 * delta["retain"], m["nll"]
    # top-level loss keys: mean answer NLL at the start and end of unlearning
    for split in ("forget", "retain"):
        assert m[f"{split}_loss_start"] == pytest.approx(before[split]) and m[f"{split}_loss_end"] == pytest.approx(after[split])
    assert m["forget_loss_end"] > m["forget_loss_start"]
    assert m["status"] == "completed" and m["method"] == "GradDiff" and m["method_args"]["alpha"] == 1.0
    assert any("forget_loss" in h for h in m["log_history"])
    per = json.loads((out / "eval" / "nll_after.json").read_text())
    assert len(per["forget"]) == 8 and sum(per["forget"]) / 8 == pytest.approx(after["forget"])
    assert (out / "model" / "model.safetensors").is_file()


def test_lora_switch_trains_and_saves_adapters_only(trained, workdir):
    out = workdir / "lora"
    run("unlearn", "experiment=llm/tofu_synthetic", "trainer=GA", "lora.enabled=true", "lora.r=4", "trainer.args.num_train_epochs=2",
        "trainer.args.learning_rate=1e-2", f"paths.output_dir={out}", f"paths.cache_dir={workdir / 'cache'}",
        f"model.model_args.pretrained_model_name_or_path={trained / 'target'}", cwd=workdir)
    m = json.loads((out / "metrics.json").read_text())
    assert m["lora"]["enabled"] is True and m["lora"]["r"] == 4
    assert m["nll"]["delta"]["forget"] > 0.05, m["nll"]
    # adapters only (lora.merge is false on the LLM track), saved with save_pretrained
    adapter = json.loads((out / "model_adapter" / "adapter_config.json").read_text())
    assert adapter["r"] == 4 and adapter["base_model_name_or_path"] == str(trained / "target")
    assert not (out / "model_adapter" / "model.safetensors").exists() and not (out / "model").exists()
    assert m["model_dir"] == str(out / "model_adapter")


def test_seed_001_command_line_composes(workdir):
    proc = run("unlearn", *SEED_001, "paths.tofu=/data/tofu", "--cfg", "job", cwd=workdir)
    cfg = yaml.safe_load(proc.stdout)
    assert cfg["model"]["builder"] == "tiny-llama" and cfg["model"]["track"] == "llm"
    assert cfg["trainer"]["handler"] == "GradDiff" and cfg["trainer"]["method_args"]["alpha"] == 0.5
    assert (cfg["data"]["forget"], cfg["data"]["retain"], cfg["data"]["eval"]) == ("TOFU_QA_FORGET10", "TOFU_QA_RETAIN90", "TOFU_QA_FORGET10_P")
    assert cfg["collator"]["name"] == "DataCollatorForSupervisedDataset" and cfg["paths"]["tofu"] == "/data/tofu"
    assert "lora" in cfg and cfg["lora"]["enabled"] is False


def test_missing_local_tofu_dir_is_a_one_line_error(workdir):
    proc = run("unlearn", *SEED_001, "paths.tofu=./no_such_dir", f"paths.output_dir={workdir / 'err'}", cwd=workdir, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: data directory './no_such_dir' does not exist")
