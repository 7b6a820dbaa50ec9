"""The before/after NLL probes measure at most `probe_samples` rows per split (seeded, the same
rows before and after) and metrics.json says how many of how many."""

from __future__ import annotations

import json

import pytest
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra

from obliviate.metrics.runner import ForwardRunner
from obliviate.pipelines import llm


def _rows(n: int, tag: str) -> list[dict]:
    return [{"question": f"What is {tag} fact number {i}?", "answer": f"It is {tag} {i * 7 % 13} and {i}.",
             "paraphrased_answer": f"{tag} {i} it is.", "perturbed_answer": [f"It is not {tag} {i}.", "No."]} for i in range(n)]


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture
def tofu(tmp_path):
    d = tmp_path / "tofu"
    d.mkdir()
    _write(d / "forget10.json", _rows(12, "forget"))
    _write(d / "retain90.json", _rows(1000, "retain"))  # a 1,000-row retain file
    _write(d / "forget10_perturbed.json", _rows(12, "forget"))
    return d


def _cfg(tofu, out, *extra):
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module("obliviate.configs", version_base="1.3"):
            return compose(config_name="unlearn", overrides=[
                "model=tiny-llama", f"paths.tofu={tofu}", f"paths.output_dir={out}", "trainer=GradDiff",
                "data.forget=TOFU_QA_FORGET10", "data.retain=TOFU_QA_RETAIN90", "data.eval=TOFU_QA_FORGET10_P",
                "++trainer.args.max_steps=1", "++trainer.args.disable_tqdm=true", "data.cache_tokenized=false",
                "model.config_args.hidden_size=32", "model.config_args.intermediate_size=64",
                "model.config_args.num_hidden_layers=1", "model.config_args.num_attention_heads=2",
                "model.config_args.num_key_value_heads=1", *extra])
    finally:
        GlobalHydra.instance().clear()


@pytest.fixture
def probe_rows(monkeypatch):
    """Sequences through the probes' teacher-forced passes (training does not use the runner)."""
    calls: list[int] = []
    original = ForwardRunner.score

    def counted(self, groups, *args, **kwargs):
        out = original(self, groups, *args, **kwargs)
        calls.append(self.counter.forward_sequences)
        return out

    monkeypatch.setattr(ForwardRunner, "score", counted)
    return calls


def test_probes_are_bounded_and_reported(tofu, tmp_path, probe_rows):
    out = tmp_path / "run"
    res = llm.run_unlearning(_cfg(tofu, out, "probe_samples=64"), out)
    # before and after: forget 12 + retain 64 (of 1,000) + eval 12 sequences, never the whole retain file
    assert probe_rows == [12, 64, 12, 12, 64, 12]
    m = json.loads((out / "metrics.json").read_text())
    assert m["probes"] == {"forget": {"n": 12, "of": 12, "sampled": False}, "retain": {"n": 64, "of": 1000, "sampled": True},
                           "eval": {"n": 12, "of": 12, "sampled": False}}
    assert m["data"]["retain"]["n"] == 1000 and res["probes"]["retain"]["n"] == 64
    idx = json.loads((out / "eval" / "probe_indices.json").read_text())["retain"]
    assert len(idx) == len(set(idx)) == 64 and idx == sorted(idx) and max(idx) < 1000
    per = json.loads((out / "eval" / "nll_before.json").read_text())
    assert len(per["retain"]) == len(json.loads((out / "eval" / "nll_after.json").read_text())["retain"]) == 64
    assert m["nll"]["before"]["retain"] == pytest.approx(sum(per["retain"]) / 64)


def test_probe_sample_is_seeded_and_null_means_all(tofu, tmp_path):
    from obliviate.pipelines.llm import load_model, load_split, probe_sets

    cfg = _cfg(tofu, tmp_path / "x")
    _, tokenizer = load_model(cfg)
    retain = load_split(cfg, "retain", tokenizer)
    a = probe_sets({"retain": retain}, 100, seed=0)[1]["retain"]["indices"]
    b = probe_sets({"retain": retain}, 100, seed=0)[1]["retain"]["indices"]
    c = probe_sets({"retain": retain}, 100, seed=1)[1]["retain"]["indices"]
    assert a == b != c
    sets, info = probe_sets({"retain": retain, "eval": None}, None, seed=0)
    assert sets["retain"] is retain and info["retain"] == {"n": 1000, "of": 1000, "indices": None} and sets["eval"] is None
    from obliviate.errors import ConfigError

    with pytest.raises(ConfigError, match="probe_samples must be a positive"):
        probe_sets({"retain": retain}, 0, seed=0)
