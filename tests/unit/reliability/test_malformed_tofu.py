"""Malformed TOFU-format files never raise anything but a clear DataError."""

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from obliviate.data.text.tofu import load_idk_answers, load_qa_rows
from obliviate.errors import DataError

scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=20))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)), max_leaves=8)
rows = st.dictionaries(st.sampled_from(["question", "answer", "paraphrased_answer", "perturbed_answer", "author", "x"]), values, max_size=5)
json_lines = st.lists(st.one_of(rows.map(json.dumps), st.text(max_size=40), values.map(json.dumps)), max_size=6)


@settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=json_lines, name=st.sampled_from(["forget10", "forget10_perturbed", "retain90", "real_authors_perturbed", "holdout10"]),
       raw=st.binary(max_size=30))
def test_malformed_files_give_data_error_or_valid_rows(tmp_path, lines, name, raw):
    path = tmp_path / f"{name}.json"
    path.write_text("\n".join(lines))
    try:
        out = load_qa_rows(str(tmp_path), name)
    except DataError as exc:
        assert str(exc) and "\n" not in str(exc)
    else:
        assert isinstance(out, list) and all(isinstance(r, dict) for r in out)
        for r in out:
            assert isinstance(r.get("question"), str) and isinstance(r.get("answer"), str)
    path.write_bytes(raw)  # arbitrary bytes, invalid UTF-8 included
    try:
        load_qa_rows(str(tmp_path), name)
    except DataError:
        pass
    idk = tmp_path / "idk.jsonl"
    idk.write_bytes(raw)
    try:
        load_idk_answers(idk)
    except DataError:
        pass


def test_missing_field_names_file_row_and_field(tmp_path):
    (tmp_path / "forget10.json").write_text(json.dumps({"question": "q", "answer": "a"}) + "\n" + json.dumps({"question": "q2"}) + "\n")
    with pytest.raises(DataError, match=r"forget10.json.*row 2.*'answer'"):
        load_qa_rows(str(tmp_path), "forget10")
