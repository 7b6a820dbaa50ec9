"""`obliviate report` / `obliviate compare` on hand-made run dirs (vision, LLM, quickstart)."""

import base64
import io
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from obliviate.cli import main
from obliviate.errors import DataError
from obliviate.report.compare import compare
from obliviate.report.html import SECTIONS, write_report

IMG_RE = re.compile(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"')


def _metrics(ua: float, ra: float, gap: float, method: str = "GA") -> dict:
    hist = [{"loss": 1.0 - 0.1 * i, "forget_loss": -0.5 * i, "retain_loss": 0.2, "grad_norm": 1.0 + i, "learning_rate": 1e-3,
             "epoch": i, "step": 5 * i} for i in range(1, 6)]
    hist.append({"train_runtime": 3.0, "train_loss": 0.7, "epoch": 5, "step": 25})
    block = {"UA": ua, "RA": ra, "TA": 95.0, "MIA": 80.0}
    return {"track": "vision", "status": "completed", "method": method,
            "original": {"UA": 0.0, "RA": 100.0, "TA": 97.0, "MIA": 0.0, "avg_gap": 50.0},
            "retrain": {"UA": 100.0, "RA": 100.0, "TA": 97.0, "MIA": 100.0, "train_time_s": 60.0},
            "unlearned": {**block, "avg_gap": gap, "rte_s": 4.5, "rte_ratio_to_retrain": 0.075}, "log_history": hist}


def _per_sample(rng: np.random.Generator, forget_conf: float) -> dict:
    def part(n, mean):
        return {"index": list(range(n)), "label": [0] * n, "pred": [0] * n, "confidence": np.clip(rng.normal(mean, 0.1, n), 0, 1).tolist()}

    return {"forget": part(30, forget_conf), "retain": part(100, 0.95), "test": part(50, 0.85)}


def make_vision_run(path: Path, ua: float = 99.0, ra: float = 97.5, gap: float = 1.25, method: str = "GA") -> Path:
    path.mkdir(parents=True)
    (path / "metrics.json").write_text(json.dumps(_metrics(ua, ra, gap, method)))
    rng = np.random.default_rng(0)
    for stage, conf in (("original", 0.95), ("unlearned", 0.2), ("retrain", 0.1)):
        (path / "eval").mkdir(exist_ok=True)
        (path / "eval" / f"{stage}.json").write_text(json.dumps(_per_sample(rng, conf)))
    return path


def make_llm_run(path: Path, fq: float = 0.012, mu: float = 0.45) -> Path:
    (path / "evals").mkdir(parents=True)
    (path / "metrics.json").write_text(json.dumps({"track": "llm", "method": "NPO", "status": "completed", "log_history": [
        {"loss": 2.0, "forget_loss": -1.0, "retain_loss": 1.0, "step": 1}, {"loss": 1.5, "forget_loss": -1.5, "retain_loss": 0.9, "step": 2}]}))
    summary = {"forget_quality": {"agg_value": fq}, "model_utility": {"agg_value": mu}, "forget_truth_ratio": {"agg_value": 0.61},
               "forget_Q_A_ROUGE": {"agg_value": 0.38}, "privleak": {"agg_value": -12.5}}
    (path / "evals" / "TOFU_SUMMARY.json").write_text(json.dumps(summary))
    return path


def make_quickstart(path: Path) -> Path:
    path.mkdir(parents=True)
    settings = []
    for sname in ("random_10pct", "class_9"):
        rows = [{"method": "original", "UA": 0.0, "RA": 100.0, "TA": 97.0, "MIA": 0.0, "avg_gap": 50.0, "rte_s": None}]
        for i, method in enumerate(("GA", "RL")):
            make_vision_run(path / sname / method, ua=90.0 + i, gap=2.0 + i, method=method)
            rows.append({"method": method, "UA": 90.0 + i, "RA": 97.5, "TA": 95.0, "MIA": 80.0, "avg_gap": 2.0 + i, "rte_s": 4.5})
        settings.append({"setting": sname, "selection": {}, "n_forget": 30, "rows": rows,
                         "retrain": {"method": "retrain", "UA": 100.0, "RA": 100.0, "TA": 97.0, "MIA": 100.0, "avg_gap": 0.0, "rte_s": 60.0}})
    (path / "summary.json").write_text(json.dumps({"dataset": "digits", "model": "digits_cnn", "seed": 0, "settings": settings}))
    return path


@pytest.fixture()
def runs(tmp_path):
    return {"a": make_vision_run(tmp_path / "run_a"), "b": make_vision_run(tmp_path / "run_b", ua=95.0, ra=99.0, gap=3.5, method="RL"),
            "llm": make_llm_run(tmp_path / "llm_run"), "qs": make_quickstart(tmp_path / "qs")}


def _images(html: str) -> list[Image.Image]:
    out = []
    for data in IMG_RE.findall(html):
        img = Image.open(io.BytesIO(base64.b64decode(data)))
        img.load()
        out.append(img)
    return out


def test_report_has_every_section_and_decodable_images(runs, tmp_path):
    out = write_report([runs["a"], runs["b"], runs["llm"], runs["qs"]], tmp_path / "r" / "report.html")
    html = out.read_text()
    for sid, title in SECTIONS:
        assert f'<section id="{sid}">' in html and title in html
    sections = {sid: html.split(f'<section id="{sid}">')[1].split("</section>")[0] for sid, _ in SECTIONS}
    counts = {sid: len(_images(body)) for sid, body in sections.items()}
    # curves: 2 vision + 4 quickstart runs (the LLM run logged 2 points: a table instead);
    # comparison: one chart per metric (6 vision metrics x 3 settings, 5 TOFU metrics); distributions: 2 + 4
    assert counts == {"overview": 0, "training-curves": 6, "method-comparison": 6 * 3 + 5, "score-distributions": 6, "metric-tables": 0}
    assert "forget_loss" in sections["training-curves"] and "<table>" in sections["training-curves"]  # the LLM run's log
    images = _images(html)
    assert all(img.format == "PNG" and img.size[0] > 100 and img.size[1] > 100 for img in images)
    assert all(img.size[0] <= 3 * img.size[1] for img in images)
    assert "http://" not in html and "https://" not in html and "<script" not in html  # self-contained
    assert "class_9/RL" in html and "Forget quality" in html and "0.0120" in html


def test_report_default_path_and_cli(runs, capsys):
    main(["report", str(runs["a"])])
    assert (runs["a"] / "report.html").is_file()
    assert "report:" in capsys.readouterr().out


def test_compare_rows_markdown_and_csv(runs, tmp_path):
    text = compare([runs["a"], runs["b"]])
    lines = text.strip().splitlines()
    assert [c.strip() for c in lines[0].strip("|").split("|")] == ["run", "method", "UA", "RA", "TA", "MIA", "Avg. Gap", "RTE (s)"]
    assert [c.strip() for c in lines[2].strip("|").split("|")] == ["run_a", "GA", "99.00", "97.50", "95.00", "80.00", "1.25", "4.50"]
    assert [c.strip() for c in lines[3].strip("|").split("|")] == ["run_b", "RL", "95.00", "99.00", "95.00", "80.00", "3.50", "4.50"]
    csv_text = compare([runs["a"], runs["b"], runs["llm"]], fmt="csv")
    assert "run_a,GA,99.0,97.5,95.0,80.0,1.25,4.5" in csv_text
    assert "run,method,Forget quality,Model utility,Forget truth ratio,Forget ROUGE,PrivLeak" in csv_text
    assert "llm_run,NPO,0.012,0.45,0.61,0.38,-12.5" in csv_text
    qs = compare([runs["qs"]], fmt="csv").splitlines()
    assert [r.split(",")[0] for r in qs[1:]] == ["random_10pct/GA", "random_10pct/RL", "class_9/GA", "class_9/RL"]


def test_compare_cli_csv_to_file(runs, tmp_path, capsys):
    main(["compare", str(runs["a"]), str(runs["llm"]), "--csv", "-o", str(tmp_path / "t.csv")])
    assert (tmp_path / "t.csv").read_text() == capsys.readouterr().out


def test_missing_metrics_is_a_one_line_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="has no metrics.json"):
        compare([tmp_path / "empty"])
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "metrics.json").write_text("{oops")
    with pytest.raises(SystemExit) as exc:
        main(["report", str(tmp_path / "bad")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "not valid JSON" in err and len(err.strip().splitlines()) == 1


CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome", "chrome") if shutil.which(n)), None)


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary (apt-get install chromium)")
def test_report_renders_in_headless_chromium(runs, tmp_path):
    out = write_report([runs["a"], runs["llm"]], tmp_path / "report.html")
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
             "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([CHROMIUM, *flags, "--dump-dom", out.as_uri()], capture_output=True, text=True, timeout=120).stdout
    for sid, _ in SECTIONS:
        assert f'id="{sid}"' in dom, sid
    shot = tmp_path / "shot.png"
    subprocess.run([CHROMIUM, *flags, "--window-size=1200,2400", f"--screenshot={shot}", out.as_uri()], capture_output=True,
                   timeout=120, check=False)
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float32)
    assert pixels.std() > 10  # not a blank page
    assert (pixels < 128).mean() > 0.01  # text and plots drawn


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
