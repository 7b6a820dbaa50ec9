"""The synthetic fictitious-authors generator writes TOFU's layout, deterministically."""

import json

import pytest

from obliviate.data.text import load_qa_rows, synthetic_tofu, write_synthetic_tofu
from obliviate.data.text.synthetic import TEMPLATES
from obliviate.data.text.tofu import TOFU_SCHEMAS, read_text_lines
from obliviate.errors import ConfigError

FILES = sorted(TOFU_SCHEMAS)
EXTRA = [f"holdout{p}_perturbed" for p in ("01", "05", "10")]  # beyond TOFU's layout (obliviate tune's truth-ratio term)


def test_layout_sizes_and_splits(tmp_path):
    out = write_synthetic_tofu(tmp_path / "syn", n_authors=20, qa_per_author=4, seed=0)
    assert sorted(p.name for p in out.iterdir()) == sorted([f"{f}.json" for f in FILES + EXTRA] + ["idontknow.jsonl", "manifest.json"])
    rows = {f: load_qa_rows(str(out), f) for f in FILES}  # validates every TOFU schema
    full = rows["full"]
    assert len(full) == 80  # 20 authors x 4
    # forgetXX = the last XX% of the authors (at least one), retain = the rest, in order
    for pct, n_authors in (("01", 1), ("05", 1), ("10", 2)):
        n = n_authors * 4
        assert rows[f"forget{pct}"] == full[-n:]
        assert rows[f"retain{100 - int(pct)}"] == full[:-n]
        pert = rows[f"forget{pct}_perturbed"]
        assert [{"question": r["question"], "answer": r["answer"]} for r in pert] == full[-n:]
        assert len(rows[f"holdout{pct}"]) == n
        hp = load_qa_rows(str(out), f"holdout{pct}_perturbed", required={"paraphrased_answer": str, "perturbed_answer": list})
        assert [{"question": r["question"], "answer": r["answer"]} for r in hp] == rows[f"holdout{pct}"]
    assert [r["question"] for r in rows["retain_perturbed"]] == [r["question"] for r in full[:8]]
    for r in rows["forget10_perturbed"]:
        assert len(r["perturbed_answer"]) == 5 and len(set(r["perturbed_answer"])) == 5
        assert r["answer"] not in r["perturbed_answer"] and r["paraphrased_answer"] != r["answer"]
    holdout_q = {r["question"] for r in rows["holdout10"]}
    assert not holdout_q & {r["question"] for r in full}
    for stem in ("real_authors", "world_facts"):
        for plain, pert in zip(rows[stem], rows[f"{stem}_perturbed"]):
            options = [plain[f"option{i}"] for i in range(1, 5)]
            assert plain["answer"] in options and len(pert["perturbed_answer"]) == 3
            assert set(pert["perturbed_answer"]) == set(options) - {plain["answer"]}
    assert len(read_text_lines(out / "idontknow.jsonl")) == 12
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["params"]["n_authors"] == 20 and manifest["rows"]["full"] == 80


def test_deterministic_from_the_seed(tmp_path):
    a = write_synthetic_tofu(tmp_path / "a", n_authors=10, qa_per_author=3, seed=7)
    b = write_synthetic_tofu(tmp_path / "b", n_authors=10, qa_per_author=3, seed=7)
    for f in FILES:
        assert (a / f"{f}.json").read_bytes() == (b / f"{f}.json").read_bytes()
    assert synthetic_tofu(10, 3, seed=8)["full"] != synthetic_tofu(10, 3, seed=7)["full"]


def test_rewrites_only_when_parameters_change(tmp_path):
    out = write_synthetic_tofu(tmp_path / "s", n_authors=10, qa_per_author=2)
    stamp = (out / "full.json").stat().st_mtime_ns
    write_synthetic_tofu(out, n_authors=10, qa_per_author=2)
    assert (out / "full.json").stat().st_mtime_ns == stamp
    write_synthetic_tofu(out, n_authors=10, qa_per_author=3)
    assert len(load_qa_rows(str(out), "full")) == 30


def test_every_author_gets_distinct_templates():
    full = synthetic_tofu(6, len(TEMPLATES), seed=1)["full"]
    assert len(full) == 6 * len(TEMPLATES) and len({r["question"] for r in full}) == len(full)


def test_bad_parameters():
    with pytest.raises(ConfigError, match="qa_per_author"):
        synthetic_tofu(5, 0)
    with pytest.raises(ConfigError, match="at least 2 authors"):
        synthetic_tofu(1, 2)
