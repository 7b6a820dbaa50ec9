"""TOFU loading from a local JSON Lines directory, schema errors, dataset configs, overlap."""

import json

import pytest

from obliviate.data.text import QADataset, load_idk_answers, load_qa_rows, read_jsonl, resolve_dataset_spec
from obliviate.data.text.synthetic import IDK_ANSWERS
from obliviate.data.text.tofu import available_datasets
from obliviate.errors import ConfigError, DataError, UnknownNameError
from obliviate.models.llm import build_tiny_tokenizer, ensure_pad_token
from obliviate.pipelines.llm import check_forget_retain


@pytest.fixture(scope="module")
def tofu(shared_data):
    path = shared_data / "tofu"
    if not (path / "full.json").is_file():
        pytest.skip("../shared/data/tofu is not available")
    return path


def test_real_tofu_splits_load_with_their_documented_sizes(tofu):
    full = load_qa_rows(str(tofu), "full")
    forget10 = load_qa_rows(str(tofu), "forget10")
    retain90 = load_qa_rows(str(tofu), "retain90")
    pert = load_qa_rows(str(tofu), "forget10_perturbed")
    assert (len(full), len(forget10), len(retain90), len(pert)) == (4000, 400, 3600, 400)
    assert forget10 == full[-400:] and retain90 == full[:3600]
    assert all(len(r["perturbed_answer"]) == 5 for r in pert)
    assert [r["question"] for r in pert] == [r["question"] for r in forget10]
    assert len(load_idk_answers(str(tofu))) == 100  # 99 newline-terminated lines + a last one without


def test_dataset_configs_point_at_paths_tofu(tofu):
    name, spec = resolve_dataset_spec("TOFU_QA_FORGET10_P", {"tofu": str(tofu)})
    assert name == "TOFU_QA_FORGET10_P"
    assert spec["handler"] == "QADataset"
    assert spec["args"]["hf_args"] == {"path": str(tofu), "name": "forget10_perturbed", "split": "train"}
    assert spec["args"]["answer_key"] == "paraphrased_answer"
    _, hub = resolve_dataset_spec("TOFU_QA_RETAIN90", {"tofu": "locuslab/TOFU"})
    assert hub["args"]["hf_args"]["path"] == "locuslab/TOFU"


def test_every_packaged_dataset_config_resolves_and_names_its_file(tmp_path):
    names = available_datasets()
    for required in ("TOFU_QA_FORGET01", "TOFU_QA_FORGET05", "TOFU_QA_FORGET10", "TOFU_QA_RETAIN90", "TOFU_QA_RETAIN95",
                     "TOFU_QA_RETAIN99", "TOFU_QA_FORGET10_P", "TOFU_QA_FORGET01_P", "TOFU_QA_FORGET05_P", "TOFU_QA_full",
                     "TOFU_QA_HOLDOUT01", "TOFU_QA_HOLDOUT05", "TOFU_QA_HOLDOUT10", "TOFU_QA_RA", "TOFU_QA_WF", "TOFU_QA_RA_PT",
                     "TOFU_QA_WF_PT", "TOFU_QA_FORGET10_IDK"):
        assert required in names
    for n in names:  # TOFU_* read paths.tofu, QA_* paths.qa, MUSE_* paths.muse, WMDP_* files under paths.wmdp
        name, spec = resolve_dataset_spec(n, {"tofu": str(tmp_path), "qa": str(tmp_path), "muse": str(tmp_path), "wmdp": str(tmp_path)})
        assert name == n and spec["handler"] in ("QADataset", "QAwithIdkDataset", "PretrainingDataset", "CompletionDataset")
        hf = spec["args"]["hf_args"]
        assert hf["path"] == str(tmp_path) or (n.startswith("WMDP_") and hf["data_files"].startswith(str(tmp_path)))


def test_inline_and_reference_style_specs():
    inline = {"handler": "QADataset", "args": {"hf_args": {"path": "${paths.tofu}", "name": "forget01"}}}
    assert resolve_dataset_spec(inline, {"tofu": "/d"})[1]["args"]["hf_args"]["path"] == "/d"
    name, spec = resolve_dataset_spec({"MINE": inline}, {"tofu": "/d"})
    assert name == "MINE" and spec["handler"] == "QADataset"
    with pytest.raises(ConfigError, match="needs 'handler'"):
        resolve_dataset_spec({"args": {}}, {})
    with pytest.raises(ConfigError, match="could not be resolved"):
        resolve_dataset_spec("TOFU_QA_FORGET10", {})


def test_unknown_dataset_name_suggests_close_names():
    with pytest.raises(UnknownNameError, match="unknown dataset 'TOFU_QA_FORGET1'.*Did you mean: TOFU_QA_FORGET10"):
        resolve_dataset_spec("TOFU_QA_FORGET1", {"tofu": "/d"})


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_schema_errors_name_file_row_and_field(tmp_path):
    _write(tmp_path / "forget10.json", [{"question": "q", "answer": "a"}, {"question": "q2"}])
    with pytest.raises(DataError) as err:
        load_qa_rows(str(tmp_path), "forget10")
    msg = str(err.value)
    assert f"{tmp_path / 'forget10.json'}: row 2 has no field 'answer' (it has: question)" == msg
    _write(tmp_path / "forget05_perturbed.json", [{"question": "q", "answer": "a", "paraphrased_answer": "p", "perturbed_answer": "x"}])
    with pytest.raises(DataError, match=r"row 1 field 'perturbed_answer' must be a non-empty list of strings, got str"):
        load_qa_rows(str(tmp_path), "forget05_perturbed")
    _write(tmp_path / "custom.json", [{"prompt": "q", "answer": "a"}])
    with pytest.raises(DataError, match=r"custom.json: row 1 has no field 'question'"):
        load_qa_rows(str(tmp_path), "custom", required={"question": str})


def test_bad_json_line_and_missing_file(tmp_path):
    (tmp_path / "full.json").write_text('{"question": "q", "answer": "a"}\n{"question": \n')
    with pytest.raises(DataError, match=r"full.json: line 2 is not valid JSON"):
        read_jsonl(tmp_path / "full.json")
    with pytest.raises(DataError, match=r"forget10.json' does not exist. Files there: full$"):
        load_qa_rows(str(tmp_path), "forget10")
    (tmp_path / "forget01.json").write_text('{"question": "q", "answer": "a"}\n')
    with pytest.raises(DataError, match=r"forget10.json' does not exist. Did you mean: forget01\?"):
        load_qa_rows(str(tmp_path), "forget10")
    with pytest.raises(DataError, match="data directory './nope' does not exist"):
        load_qa_rows("./nope", "forget10")


def test_hub_loading_offline_is_a_clear_data_error(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError, match=r"could not load 'locuslab/TOFU' subset 'forget10' .*paths.tofu=DIR"):
        load_qa_rows("locuslab/TOFU", "forget10")


def test_idk_answers_fall_back_to_builtin(tmp_path):
    assert load_idk_answers("locuslab/TOFU") == IDK_ANSWERS
    with pytest.raises(DataError, match="does not exist"):
        load_idk_answers("/no/such/idontknow.jsonl")


def test_forget_retain_overlap_is_detected_by_content(tofu):
    tok = ensure_pad_token(build_tiny_tokenizer())
    rows = load_qa_rows(str(tofu), "full")
    forget = QADataset(rows=rows[-3:], tokenizer=tok, name="forget")
    check_forget_retain(forget, QADataset(rows=rows[:-3], tokenizer=tok, name="retain"))  # disjoint: fine
    overlapping = QADataset(rows=[dict(r) for r in rows[-4:-1]], tokenizer=tok, name="retain")  # copies: same content
    with pytest.raises(DataError) as err:
        check_forget_retain(forget, overlapping)
    msg = str(err.value)
    assert "overlap in 2 QA pair(s)" in msg and repr(rows[-3]["question"][:60]) in msg
    # TOFU's duplicated question (rows 100 and 440) has different answers: not an overlap
    assert rows[100]["question"] == rows[440]["question"]
    check_forget_retain(QADataset(rows=[rows[100]], tokenizer=tok), QADataset(rows=[rows[440]], tokenizer=tok))
