"""End-to-end: `obliviate quickstart track=llm` (tiny-llama, synthetic authors, GradDiff + NPO)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

OBLIVIATE = shutil.which("obliviate", path=str(Path(sys.executable).parent)) or "obliviate"
KEYS = ("forget_prob_before", "forget_prob_after", "retain_prob_before", "retain_prob_after")


def run(*args, cwd):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OBLIVIATE_DEBUG": "", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([OBLIVIATE, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600, check=False)
    if proc.returncode != 0:
        raise AssertionError(f"obliviate {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def test_quickstart_track_llm_composes(tmp_path):
    cfg = yaml.safe_load(run("quickstart", "track=llm", "--cfg", "job", cwd=tmp_path).stdout)
    assert cfg["model"]["builder"] == "tiny-llama" and cfg["data"]["full"] == "TOFU_QA_full"
    assert cfg["quickstart"]["methods"] == ["GradDiff", "NPO"] and cfg["synthetic"]["n_authors"] == 20
    vision = yaml.safe_load(run("quickstart", "--cfg", "job", cwd=tmp_path).stdout)
    assert vision["model"]["builder"] != "tiny-llama" and vision["model"].get("track", "vision") == "vision"


def test_quickstart_track_llm_forgets_forget10(tmp_path):
    out = tmp_path / "qs"
    proc = run("quickstart", "track=llm", f"paths.output_dir={out}", f"paths.cache_dir={tmp_path / 'cache'}", "synthetic.n_authors=10",
               cwd=tmp_path)
    assert "forget p before" in proc.stdout and "NPO" in proc.stdout
    s = json.loads((out / "summary.json").read_text())
    assert s["track"] == "llm" and s["data"] == {"full": 40, "forget": 4, "retain": 36, "synthetic": {"n_authors": 10, "qa_per_author": 4, "seed": 0}}
    assert [r["method"] for r in s["rows"]] == ["GradDiff", "NPO"]
    for r in s["rows"]:
        assert all(0.0 < r[k] < 1.0 for k in KEYS), r
        # the target model was fine-tuned on `full`: both sets start well above chance (1/261 per token)
        assert r["forget_prob_before"] > 0.2 and r["retain_prob_before"] > 0.2, r
        drop_forget = r["forget_prob_before"] - r["forget_prob_after"]
        drop_retain = r["retain_prob_before"] - r["retain_prob_after"]
        assert drop_forget > 0.1 and drop_forget > drop_retain, r
        assert r["forget_loss_end"] > r["forget_loss_start"] and r["status"] == "completed"
        assert (Path(r["run_dir"]) / "metrics.json").is_file()
    # both unlearning runs start from the same saved target model
    assert s["rows"][0]["forget_prob_before"] == pytest.approx(s["rows"][1]["forget_prob_before"], abs=1e-6)
    assert (out / "target" / "model.safetensors").is_file()
    assert json.loads((out / "manifest.json").read_text())["status"] == "completed"
    # every method's folder is a complete run dir, and compare / report show the numbers the run printed
    for method in ("GradDiff", "NPO"):
        assert json.loads((out / method / "manifest.json").read_text())["status"] == "completed"
        assert (out / method / "config.yaml").is_file()
    table = run("compare", str(out), "--csv", cwd=tmp_path).stdout.splitlines()
    assert table[0].startswith("run,method,forget p before,forget p after,retain p before,retain p after")
    for line, r in zip(table[1:], s["rows"]):
        cells = line.split(",")
        assert cells[1] == r["method"] and [float(c) for c in cells[2:6]] == pytest.approx([r[k] for k in KEYS], abs=1e-9)
    run("report", str(out), "-o", str(tmp_path / "r.html"), cwd=tmp_path)
    page = (tmp_path / "r.html").read_text()
    assert "NPO" in page and "No headline metrics" not in page and "forget p after" in page
    summary_table = page.split("<h3>summary (llm)</h3>")[1].split("</table>")[0]
    assert summary_table.count("<td>-</td>") == 0
