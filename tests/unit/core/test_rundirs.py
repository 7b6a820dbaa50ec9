"""Default run directories: names from the composed config, a time stamp when taken."""

import json
import re

import pytest
from hydra import compose, initialize_config_module

import obliviate  # noqa: F401  (registers the resolvers)
from obliviate import rundirs
from obliviate.rundirs import choose_run_dir, pin_run_dir, run_name


def _cfg(command, *overrides):
    with initialize_config_module("obliviate.configs", version_base="1.3"):
        return compose(command, overrides=list(overrides))


@pytest.mark.parametrize("command, overrides, name", [
    ("unlearn", ["experiment=vision/digits", "trainer=GA", "forget_class=9"], "unlearn-GA-digits-class9"),
    ("unlearn", ["trainer=RL", "forget_fraction=0.1"], "unlearn-RL-digits-random10pct"),
    ("unlearn", ["trainer=FT", "forget_class=[1,2]", "pruning=omp", "lora.enabled=true"], "unlearn-FT-digits-class1+2-omp90-lora"),
    ("unlearn", ["trainer=SalUn", "forget_count=50"], "unlearn-SalUn-digits-random50"),
    ("unlearn", ["experiment=vision/cifar10", "trainer=RL", "forget_fraction=0.1"], "unlearn-RL-cifar10-random10pct"),
    ("train", ["experiment=vision/digits", "forget_class=9"], "train-digits-class9"),
    ("unlearn", ["model=tiny-llama", "trainer=GradDiff"], "unlearn-GradDiff-TOFU_QA_FORGET10"),
    ("unlearn", ["experiment=llm/tofu_synthetic", "trainer=NPO", "lora.enabled=true"], "unlearn-NPO-synthetic-TOFU_QA_FORGET10-lora"),
    ("train", ["experiment=llm/tofu_synthetic"], "train-synthetic-TOFU_QA_FORGET10"),
    ("quickstart", [], "quickstart-digits"),
    ("quickstart", ["experiment=llm/quickstart", "track=llm"], "quickstart-llm"),
    ("prune", ["pruning=imp", "pruning.rate=0.8"], "prune-imp80-digits"),
    ("sweep", [], "sweep-digits_GA"),
])
def test_names_say_what_ran(command, overrides, name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = _cfg(command, *overrides)
    assert run_name(cfg) == name
    assert cfg.paths.output_dir == f"outputs/{name}"


def test_a_taken_name_gets_a_time_stamp_and_a_counter(tmp_path, monkeypatch):
    monkeypatch.setattr(rundirs, "_STAMP", "20250101-120000")
    first = choose_run_dir(tmp_path, "unlearn-GA-digits-class9")
    assert first == tmp_path / "unlearn-GA-digits-class9"
    (first / ".hydra").mkdir(parents=True)
    assert choose_run_dir(tmp_path, "unlearn-GA-digits-class9") == first  # Hydra's own folder only: still free
    (first / "manifest.json").write_text(json.dumps({"status": "completed"}))
    second = choose_run_dir(tmp_path, "unlearn-GA-digits-class9")
    assert second == tmp_path / "unlearn-GA-digits-class9-20250101-120000"
    second.mkdir()
    (second / "manifest.json").write_text(json.dumps({"status": "running"}))
    assert choose_run_dir(tmp_path, "unlearn-GA-digits-class9") == tmp_path / "unlearn-GA-digits-class9-20250101-120000-2"
    # resume: the newest unfinished folder of that name; overwrite: the plain name; a sweep shares it
    assert choose_run_dir(tmp_path, "unlearn-GA-digits-class9", resume=True) == second
    assert choose_run_dir(tmp_path, "unlearn-GA-digits-class9", overwrite=True) == first
    assert choose_run_dir(tmp_path, "unlearn-GA-digits-class9", share=True) == first
    # a longer name with the same start is another run, never a candidate
    (tmp_path / "unlearn-GA-digits-class9-lora").mkdir()
    (tmp_path / "unlearn-GA-digits-class9-lora" / "manifest.json").write_text("{}")
    assert set(rundirs.existing_runs(tmp_path, "unlearn-GA-digits-class9")) == {first, second}


def test_resolution_is_stable_and_pinned(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = _cfg("unlearn", "trainer=GA", "forget_class=9")
    a = cfg.paths.output_dir
    (tmp_path / a / ".hydra").mkdir(parents=True)  # what Hydra creates before the job runs
    assert cfg.paths.output_dir == a
    pin_run_dir(cfg)
    (tmp_path / a / "manifest.json").write_text("{}")  # the job starts writing
    assert cfg.paths.output_dir == a  # pinned: no new name once the folder is in use
    again = _cfg("unlearn", "trainer=GA", "forget_class=9").paths.output_dir
    assert again != a and re.fullmatch(re.escape(a) + r"-\d{8}-\d{6}", again)


def test_explicit_output_dir_is_used_as_given(tmp_path):
    cfg = _cfg("unlearn", f"paths.output_dir={tmp_path / 'mine'}")
    assert cfg.paths.output_dir == str(tmp_path / "mine")


def test_all_ranks_of_a_launch_share_rank_0s_choice(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(rundirs, "_STAMP", "20250101-120000")
    taken = tmp_path / "outputs" / "unlearn-GA-digits-class9"
    taken.mkdir(parents=True)
    (taken / "manifest.json").write_text(json.dumps({"status": "completed"}))
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "launch-1")
    monkeypatch.setenv("RANK", "0")
    rank0 = _cfg("unlearn", "trainer=GA", "forget_class=9").paths.output_dir
    assert rank0 == "outputs/unlearn-GA-digits-class9-20250101-120000"
    (tmp_path / rank0).mkdir()
    (tmp_path / rank0 / "manifest.json").write_text("{}")  # rank 0 already writes before rank 1 resolves
    monkeypatch.setenv("RANK", "1")
    assert _cfg("unlearn", "trainer=GA", "forget_class=9").paths.output_dir == rank0
