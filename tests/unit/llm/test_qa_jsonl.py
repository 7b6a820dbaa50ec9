"""Your own QA JSON Lines with experiment=llm/qa_jsonl and eval=qa (optional alternative answers and holdout)."""

import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra

from obliviate.data.text import build_text_dataset, resolve_dataset_spec
from obliviate.errors import ConfigError, DataError
from obliviate.models.llm import load_causal_lm
from obliviate.pipelines import llm, llm_eval

TINY = {"builder": "tiny-llama", "template_args": {"apply_chat_template": True},
        "config_args": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
                        "num_key_value_heads": 1, "init_seed": 0}}


def write_qa_folder(root: Path, n_forget: int = 3, n_retain: int = 6, n_holdout: int | None = 3, alternatives: bool = True) -> Path:
    """forget/retain(/holdout).jsonl: question + answer, with paraphrased / perturbed answers if ``alternatives``."""
    root.mkdir(parents=True, exist_ok=True)

    def rows(kind: str, n: int, alt: bool) -> list[dict]:
        out = []
        for i in range(n):
            row = {"question": f"Which colour does {kind} person {i} like?", "answer": f"{kind} person {i} likes colour {i}."}
            if alt:
                row["paraphrased_answer"] = f"Colour {i} is liked by {kind} person {i}."
                row["perturbed_answer"] = [f"{kind} person {i} likes colour {i + 1}.", f"{kind} person {i} likes no colour."]
            out.append(row)
        return out

    for kind, n in (("forget", n_forget), ("retain", n_retain), ("holdout", n_holdout)):
        if n:
            (root / f"{kind}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows(kind, n, alternatives and kind != "holdout")))
    return root


def compose_cfg(command, overrides):
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module("obliviate.configs", version_base="1.3"):
            return compose(config_name=command, overrides=overrides)
    finally:
        GlobalHydra.instance().clear()


@pytest.fixture(scope="module")
def tokenizer():
    return load_causal_lm(TINY)[1]


def test_full_is_forget_then_retain(tmp_path, tokenizer):
    root = write_qa_folder(tmp_path / "qa")
    cfg = compose_cfg("train", ["experiment=llm/qa_jsonl", f"paths.qa={root}"])
    assert (cfg.data.forget, cfg.data.retain, cfg.data.full) == ("QA_FORGET", "QA_RETAIN", "QA_FULL")
    name, spec = resolve_dataset_spec(cfg.data.full, {"qa": str(root)})
    full = build_text_dataset(name, spec, tokenizer, {"apply_chat_template": True})
    assert len(full) == 9 and full.rows[0]["question"].startswith("Which colour does forget") and "retain" in full.rows[-1]["question"]


def test_missing_data_folder_is_one_clear_error():
    cfg = compose_cfg("unlearn", ["experiment=llm/qa_jsonl"])
    with pytest.raises(ConfigError, match="data.forget=QA_FORGET has no data path; set the paths.\\* key its config reads, e.g. paths.qa=DIR"):
        llm.check_sources(cfg, llm.text_data_paths(cfg))


def _splits(root, tokenizer):
    cfg = compose_cfg("unlearn", ["experiment=llm/qa_jsonl", f"paths.qa={root}", "eval=qa"])
    ecfg = llm_eval.selected_evaluators(cfg)["qa"]
    return llm_eval.load_eval_splits(ecfg, tokenizer, {"apply_chat_template": True})[0]


def test_eval_qa_uses_alternatives_and_holdout_when_present(tmp_path, tokenizer):
    splits = _splits(write_qa_folder(tmp_path / "full"), tokenizer)
    assert set(splits) == {"forget", "retain", "holdout"}
    assert "paraphrased" in splits["forget"][0] and len(splits["forget"][0]["perturbed"]) == 2
    bare = _splits(write_qa_folder(tmp_path / "bare", n_holdout=None, alternatives=False), tokenizer)
    assert set(bare) == {"forget", "retain"} and "paraphrased" not in bare["forget"][0] and "perturbed" not in bare["forget"][0]


def test_eval_qa_rejects_a_partial_field(tmp_path, tokenizer):
    root = write_qa_folder(tmp_path / "qa")
    rows = [json.loads(line) for line in (root / "forget.jsonl").read_text().splitlines()]
    del rows[1]["perturbed_answer"]
    (root / "forget.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError, match="eval split 'forget': row 2 has no 'perturbed_answer' but other rows do"):
        _splits(root, tokenizer)


def test_run_dir_is_named_after_the_data_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = compose_cfg("unlearn", ["experiment=llm/qa_jsonl", f"paths.qa={tmp_path / 'my_qa'}", "trainer=NPO"])
    assert cfg.paths.output_dir == "outputs/unlearn-NPO-my_qa"
