"""QA tokenisation and the supervised collator, checked against hand-computed ids.

The tiny tokenizer maps byte b to id b; specials: <s> 256, <|end|> 257 (eos, and pad after
ensure_pad_token), <|system|> 258, <|user|> 259, <|assistant|> 260.
"""

import numpy as np
import pytest
import torch

from obliviate.data.text import qa as qa_mod
from obliviate.data.text.qa import (
    IGNORE_INDEX,
    DataCollatorForSupervisedDataset,
    QADataset,
    QAwithIdkDataset,
    encode_qa,
    encode_rows,
)
from obliviate.errors import ConfigError, DataError
from obliviate.models.llm import build_tiny_tokenizer, ensure_pad_token

BOS, END, SYSTEM, USER, ASSISTANT = 256, 257, 258, 259, 260


def b(text: str) -> list[int]:
    return list(text.encode("utf-8"))


@pytest.fixture(scope="module")
def tok():
    return ensure_pad_token(build_tiny_tokenizer())


def test_tiny_tokenizer_ids_and_pad_is_eos(tok):
    assert tok("Hé!", add_special_tokens=False)["input_ids"] == [72, 195, 169, 33]
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (BOS, END, END)
    assert len(tok) == 261


def test_chat_template_prompt_masked_answer_and_end_of_turn_trained(tok):
    ids, labels = encode_qa(tok, "Who?", "Ann.", {"apply_chat_template": True})
    prompt = [USER, *b("Who?"), END, ASSISTANT]
    answer = [*b("Ann."), END]
    assert ids == prompt + answer
    assert labels == [IGNORE_INDEX] * len(prompt) + answer


def test_chat_template_is_used_by_default_and_system_prompt_is_masked(tok):
    ids, labels = encode_qa(tok, "Q", "A", {"system_prompt": "Be brief."})
    prompt = [SYSTEM, *b("Be brief."), END, USER, *b("Q"), END, ASSISTANT]
    assert ids == prompt + [*b("A"), END]
    assert labels[: len(prompt)] == [IGNORE_INDEX] * len(prompt)
    assert labels[len(prompt):] == [*b("A"), END]


def test_tag_template_without_chat_template_appends_eos(tok):
    targs = {"apply_chat_template": False, "user_start_tag": "Q: ", "user_end_tag": "\n", "asst_start_tag": "A: ", "asst_end_tag": "\n\n"}
    ids, labels = encode_qa(tok, "x?", "y", targs)
    prompt = b("Q: x?\nA: ")
    assert ids == prompt + [*b("y"), END]
    assert labels == [IGNORE_INDEX] * len(prompt) + [*b("y"), END]


def test_default_tags_and_truncation(tok):
    ids, labels = encode_qa(tok, "q", "abcdef", {"apply_chat_template": False}, max_length=14)
    prompt = b("Question: q\nAnswer: ")  # 20 tokens > 14: the prompt is cut, no answer left
    assert ids == prompt[:14] and labels == [IGNORE_INDEX] * 14
    ids, labels = encode_qa(tok, "q", "abcdef", {"apply_chat_template": False}, max_length=23)
    assert ids == prompt + b("abc") and labels[-3:] == b("abc")


def test_apply_chat_template_true_without_template_is_a_config_error():
    tok = ensure_pad_token(build_tiny_tokenizer())
    tok.chat_template = None
    with pytest.raises(ConfigError, match="no chat template"):
        encode_qa(tok, "q", "a", {"apply_chat_template": True})


def test_collator_right_padding_masks_and_labels(tok):
    items = [{"input_ids": [USER, 65, END, ASSISTANT, 66, END], "labels": [-100, -100, -100, -100, 66, END], "index": 0},
             {"input_ids": [USER, 67, END, ASSISTANT], "labels": [-100, -100, -100, 68], "index": 5}]
    batch = DataCollatorForSupervisedDataset(tok)(items)
    assert batch["input_ids"].tolist() == [[USER, 65, END, ASSISTANT, 66, END], [USER, 67, END, ASSISTANT, END, END]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]]
    assert batch["labels"].tolist() == [[-100, -100, -100, -100, 66, END], [-100, -100, -100, 68, -100, -100]]
    assert batch["index"].tolist() == [0, 5]


def test_pad_equal_to_eos_keeps_end_of_turn_tokens_attended(tok):
    """pad == eos == <|end|>: the end-of-turn inside the prompt and the answer's closing
    <|end|> stay attended and trained; only the real padding is masked."""
    assert tok.pad_token_id == tok.eos_token_id == END
    ds = QADataset(rows=[{"question": "Q", "answer": "A"}, {"question": "Longer?", "answer": "Yes it is."}], tokenizer=tok,
                   template_args={}, max_length=None)
    batch = ds.collate_fn([ds[0], ds[1]])
    first = batch["input_ids"][0].tolist()
    real = [USER, 81, END, ASSISTANT, 65, END]
    assert first[:6] == real and all(t == END for t in first[6:])
    assert batch["attention_mask"][0].tolist() == [1] * 6 + [0] * (len(first) - 6)
    assert batch["labels"][0].tolist() == [-100] * 4 + [65, END] + [-100] * (len(first) - 6)
    # the naive mask (ids != pad) would hide both <|end|> tokens of the real sequence
    naive = (batch["input_ids"][0] != tok.pad_token_id).long().tolist()
    assert naive[:6] == [1, 1, 0, 1, 1, 0]


def test_left_padding_for_generation(tok):
    col = DataCollatorForSupervisedDataset(tok, padding_side="left")
    batch = col([{"input_ids": [1, 2, 3]}, {"input_ids": [4]}])
    assert batch["input_ids"].tolist() == [[1, 2, 3], [END, END, 4]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]
    with pytest.raises(ConfigError):
        DataCollatorForSupervisedDataset(tok, padding_side="middle")


def test_list_answers_flatten_with_row_and_option_index(tok):
    rows = [{"question": "Q", "answer": "x", "perturbed_answer": ["a", "bb"]}, {"question": "R", "answer": "y", "perturbed_answer": ["c", "d"]}]
    ds = QADataset(rows=rows, tokenizer=tok, template_args={}, answer_key="perturbed_answer")
    batch = ds.collate_fn([ds[0], ds[1]])
    assert batch["index"].tolist() == [0, 0, 1, 1] and batch["option_index"].tolist() == [0, 1, 0, 1]
    assert batch["labels"][1].tolist()[4:7] == [98, 98, END]


def test_idk_dataset_adds_same_question_with_refusal(tok, tmp_path):
    (tmp_path / "idontknow.jsonl").write_text("No idea.\nCannot say.\n")
    rows = [{"question": "Q1", "answer": "A1"}, {"question": "Q2", "answer": "A2"}]
    ds = QAwithIdkDataset(idk_path=str(tmp_path), rows=rows, tokenizer=tok, template_args={})
    item = ds[1]
    prompt = [USER, *b("Q2"), END, ASSISTANT]
    assert item["input_ids"].tolist()[:5] == prompt
    refusal = item["idk"]["input_ids"].tolist()
    assert refusal[:5] == prompt and bytes(refusal[5:-1]).decode() in ("No idea.", "Cannot say.")
    assert ds[1]["idk"]["input_ids"].tolist() == refusal  # deterministic per row
    batch = ds.collate_fn([ds[0], ds[1]])
    assert batch["idk"]["input_ids"].shape[0] == 2 and batch["idk"]["labels"][0, :5].tolist() == [-100] * 5


def test_encoding_is_cached_in_memory_and_on_disk(tok, tmp_path, monkeypatch):
    rows = [{"question": "Q", "answer": "A"}, {"question": "R", "answer": ["s", "t"]}]
    first = encode_rows(rows, tok, {}, cache_dir=tmp_path)
    assert len(list((tmp_path / "tokenized").glob("*.npz"))) == 1
    assert encode_rows(rows, tok, {}, cache_dir=tmp_path) is first  # memory hit
    other = encode_rows(rows, tok, {"system_prompt": "S"}, cache_dir=tmp_path)  # other template: other key
    assert len(list((tmp_path / "tokenized").glob("*.npz"))) == 2 and len(other[0][0][0]) == len(first[0][0][0]) + 3
    qa_mod._MEMORY_CACHE.clear()
    calls = []
    monkeypatch.setattr(qa_mod, "encode_qa", lambda *a, **k: calls.append(a) or ([0], [0]))
    again = encode_rows(rows, tok, {}, cache_dir=tmp_path)  # disk hit: no re-tokenisation
    assert calls == [] and len(again) == 2 and len(again[1]) == 2
    for opts_a, opts_b in zip(first, again):
        for (ia, la), (ib, lb) in zip(opts_a, opts_b):
            assert np.array_equal(ia, ib) and np.array_equal(la, lb)


def test_rows_missing_the_answer_field_are_rejected(tok):
    with pytest.raises(DataError, match=r"qa: row 2 has no field 'answer'"):
        QADataset(rows=[{"question": "a", "answer": "b"}, {"question": "c"}], tokenizer=tok)
    with pytest.raises(DataError, match=r"row 1 field 'answer' must be a string or a list of strings"):
        QADataset(rows=[{"question": "a", "answer": 3}], tokenizer=tok)


def test_items_are_tensors_with_index(tok):
    ds = QADataset(rows=[{"question": "Q", "answer": "A"}], tokenizer=tok)
    item = ds[0]
    assert isinstance(item["input_ids"], torch.Tensor) and item["index"] == 0 and len(ds) == 1
