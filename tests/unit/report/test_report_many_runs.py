"""A 30-run report (vision and LLM runs) rendered in headless Chromium: every image at most
3:1 as rendered, LLM rows with numbers, short logs as tables."""

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from obliviate.report.compare import compare
from obliviate.report.html import write_report
from tests.unit.report.test_report import make_vision_run

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome", "chrome") if shutil.which(n)), None)
METHODS = ["FT", "GA", "GradDiff", "RL", "l1_sparse", "FF", "IU", "SalUn", "SCRUB", "SSD", "BadTeacher", "LoRAUnlearner", "TaskVector"]
# Reads every <img> after load (natural and rendered size) and writes them into the page, so
# --dump-dom shows what the browser laid out.
MEASURE = """<script>window.addEventListener('load', () => {
  const rows = [...document.images].map(i => [i.naturalWidth, i.naturalHeight, i.getBoundingClientRect().width,
                                              i.getBoundingClientRect().height]);
  const pre = document.createElement('pre'); pre.id = 'measure'; pre.textContent = JSON.stringify(rows);
  document.body.appendChild(pre);
});</script>"""


def make_llm_unlearn_run(path: Path, method: str, forget_after: float, tofu: bool) -> Path:
    path.mkdir(parents=True)
    metrics = {"track": "llm", "command": "unlearn", "status": "completed", "method": method,
               "data": {"forget": {"name": "TOFU_QA_FORGET10", "n": 40}},
               "nll": {"before": {"forget": 0.2, "retain": 0.25}, "after": {"forget": 3.0, "retain": 0.4}},
               "prob": {"before": {"forget": 0.82, "retain": 0.78}, "after": {"forget": forget_after, "retain": 0.67}},
               "log_history": [{"loss": 1.0 / (i + 1), "forget_loss": -float(i), "step": 2 * i} for i in range(1, 9)]}
    (path / "metrics.json").write_text(json.dumps(metrics))
    if tofu:
        (path / "TOFU_SUMMARY.json").write_text(json.dumps({"forget_quality": 0.03, "model_utility": 0.41, "forget_truth_ratio": 0.6}))
    return path


def make_llm_train_run(path: Path) -> Path:
    path.mkdir(parents=True)
    stage = {"nll": {"forget": 0.2, "retain": 0.2}, "prob": {"forget": 0.8, "retain": 0.8}, "log_history": [{"loss": 1.0, "step": 1}]}
    retain = {"nll": {"forget": 2.5, "retain": 0.2}, "prob": {"forget": 0.09, "retain": 0.81}, "log_history": [{"loss": 1.0, "step": 1}]}
    (path / "metrics.json").write_text(json.dumps({
        "track": "llm", "command": "train", "status": "completed", "data": {"forget": {"name": "TOFU_QA_FORGET10"}},
        "initial": {"nll": {"forget": 4.0, "retain": 4.1}, "prob": {"forget": 0.02, "retain": 0.02}},
        "stages": {"target": stage, "retain": retain}}))
    return path


@pytest.fixture(scope="module")
def many_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("many")
    dirs = []
    for i in range(26):
        method = METHODS[i % len(METHODS)]
        run = make_vision_run(root / f"unlearn-{method}-digits-class9-{i:02d}", ua=50.0 + i, ra=99.0 - i / 10, gap=0.5 + i / 4, method=method)
        m = json.loads((run / "metrics.json").read_text())
        m["forget"] = {"forget_class": 9}
        if i % 6:  # most runs are short: one logged point (the end-of-training means); 5 log enough for curves
            m["log_history"] = [{"train_runtime": 0.1, "train_loss": -1.8, "forget_loss": 1.8, "epoch": 3, "step": 15}]
        if i > 1:  # per-sample files (score distributions) for two runs: each figure costs time, not coverage
            shutil.rmtree(run / "eval")
        (run / "metrics.json").write_text(json.dumps(m))
        dirs.append(run)
    dirs += [make_llm_unlearn_run(root / f"unlearn-{m}-TOFU", m, 0.1 + 0.1 * k, tofu=k % 2 == 0)
             for k, m in enumerate(("GradDiff", "NPO", "SimNPO"))]
    dirs.append(make_llm_train_run(root / "train-TOFU"))
    return root, dirs


def test_compare_gives_llm_runs_their_numbers(many_runs):
    _, dirs = many_runs
    text = compare(dirs[-4:], fmt="csv")
    header, *rows = text.strip().splitlines()
    assert header.startswith("run,method,forget p before,forget p after,retain p before,retain p after,forget NLL before")
    assert [r.split(",")[0] for r in rows] == ["unlearn-GradDiff-TOFU", "unlearn-NPO-TOFU", "unlearn-SimNPO-TOFU", "train-TOFU/target",
                                               "train-TOFU/retain"]
    assert rows[0].split(",")[2:8] == ["0.82", "0.1", "0.78", "0.67", "0.2", "3.0"]
    assert rows[4].split(",")[2:4] == ["0.02", "0.09"]  # the retain model: before = the initial model


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary (apt-get install chromium)")
def test_thirty_runs_render_readably_in_chromium(many_runs, tmp_path):
    _, dirs = many_runs
    out = write_report(dirs, tmp_path / "report.html")
    page = out.read_text()
    n_images = page.count("<img ")
    assert "<script" not in page
    probe = tmp_path / "probe.html"
    probe.write_text(page.replace("</body>", MEASURE + "</body>"))
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
             "--disable-sync", "--no-first-run", "--window-size=1280,1000", "--virtual-time-budget=20000",
             f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([CHROMIUM, *flags, "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=180).stdout
    measured = json.loads(re.search(r'<pre id="measure">(.*?)</pre>', dom, re.S).group(1))
    assert len(measured) == n_images >= 15  # 11 comparison charts, 5 + 3 curves, 2 distributions
    for natural_w, natural_h, shown_w, shown_h in measured:
        assert natural_h > 0 and natural_w <= 3 * natural_h, (natural_w, natural_h)
        assert shown_h > 0 and shown_w <= 3 * shown_h + 1, (shown_w, shown_h)  # as laid out in the page
    # the LLM summary table: every LLM row carries numbers in its probability columns
    llm_table = dom.split("<h3>summary (llm)</h3>")[1].split("</table>")[0]
    rows = re.findall(r"<tr>(.*?)</tr>", llm_table.split("<tbody>")[1], re.S)
    assert len(rows) == 5
    for row in rows:
        cells = re.findall(r"<td>(.*?)</td>", row)
        assert all(re.fullmatch(r"-?\d+\.\d+", c) for c in cells[2:6]), cells
    # short logs (one point) are tables, not one-dot curves
    curves = dom.split('id="training-curves"')[1].split("</section>")[0]
    assert curves.count("train_loss") >= 21
