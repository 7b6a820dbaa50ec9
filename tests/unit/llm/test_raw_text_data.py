"""MUSE / WMDP data: hub and muse_bench layouts, raw-text chunking and completion encoding against
ports of the reference framework's tokenisation, few-shot knowmem prompts, the pretraining collator."""

from __future__ import annotations

import json

import pytest
import torch

from obliviate.data.text import COLLATORS, DataCollatorForPretraining, PretrainingDataset, QADataset, build_text_dataset, resolve_dataset_spec
from obliviate.data.text.muse import encode_fewshot_qa, load_muse_eval
from obliviate.data.text.pretraining import CompletionDataset, encode_completion
from obliviate.data.text.rawtext import load_rows
from obliviate.data.text.synthetic_bench import write_synthetic_muse, write_synthetic_wmdp
from obliviate.errors import DataError
from obliviate.models.llm import build_tiny_tokenizer, ensure_pad_token
from obliviate.pipelines.llm import check_forget_retain

IGNORE = -100


@pytest.fixture(scope="module")
def tok():
    return ensure_pad_token(build_tiny_tokenizer())


@pytest.fixture(scope="module")
def muse_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("muse")
    return write_synthetic_muse(root / "hub"), write_synthetic_muse(root / "bench", layout="muse_bench")


# ---------------------------------------------------------------- reference ports (open-unlearning src/data/utils.py, pretraining.py)
def ref_preprocess_pretraining_instance(tokenizer, prefix, text_content, max_length, insert_space=False):
    full_seq_ids = tokenizer(prefix + (" " if insert_space else "") + text_content, add_special_tokens=True)["input_ids"]
    prefix_ids = tokenizer(prefix, add_special_tokens=True)["input_ids"]
    prefix_len = len(prefix_ids)
    full_seq_ids = full_seq_ids[: prefix_len + max_length]
    len_matched = prefix_len if prefix_len else 1
    return full_seq_ids, [IGNORE] * len_matched + full_seq_ids[len_matched:], prefix_ids


def ref_chunks(tokenizer, raw_text, max_length):
    seq = tokenizer("\n\n".join(raw_text), add_special_tokens=False)["input_ids"]
    return [tokenizer.decode(seq[i * max_length : (i + 1) * max_length]) for i in range(len(seq) // max_length + 1)]


def ref_chat_instance(tokenizer, template, prompts, responses, max_length):
    text = template.get("system_prompt_with_special_tokens") or ""
    for q, a in zip(prompts[:-1], responses[:-1]):
        text += template["user_start_tag"] + q + template["user_end_tag"] + template["asst_start_tag"] + a + template["asst_end_tag"]
    text += template["user_start_tag"] + prompts[-1] + template["user_end_tag"] + template["asst_start_tag"]
    chat_ids = tokenizer(text + responses[-1], add_special_tokens=True, max_length=max_length, truncation=True)["input_ids"]
    prompt_ids = tokenizer(text, add_special_tokens=True, max_length=max_length, truncation=True)["input_ids"]
    if chat_ids[-1] != tokenizer.eos_token_id:
        chat_ids += [tokenizer.eos_token_id]
    return chat_ids, [IGNORE] * len(prompt_ids) + chat_ids[len(prompt_ids):], prompt_ids


# ---------------------------------------------------------------- layouts
def test_hub_and_muse_bench_layouts_give_the_same_rows(muse_dirs):
    hub, bench = muse_dirs
    for name, split, keys in (("raw", "forget", {"text": str}), ("verbmem", "forget", {"prompt": str, "gt": str}),
                              ("knowmem", "retain_qa_icl", {"question": str, "answer": str}), ("privleak", "holdout", {"text": str}),
                              ("scal", "forget_3", {"text": str}), ("sust", "forget_2", {"text": str})):
        a, src_a = load_rows({"path": str(hub), "name": name, "split": split}, keys)
        b, src_b = load_rows({"path": str(bench), "name": name, "split": split}, keys)
        assert a == b and a, (name, split)
        assert src_a.endswith(f"{split}-00000-of-00001.parquet") and src_b.endswith(f"{split}.json")
    both, _ = load_rows({"path": str(hub), "name": "raw", "split": "forget+retain1"})
    forget, _ = load_rows({"path": str(hub), "name": "raw", "split": "forget"})
    retain, _ = load_rows({"path": str(hub), "name": "raw", "split": "retain1"})
    assert both == forget + retain


def test_missing_split_subset_and_field_errors_name_what_exists(muse_dirs, tmp_path):
    hub, _ = muse_dirs
    with pytest.raises(DataError, match=r"no file for split 'forgt'.*Did you mean: forget.*Splits there: forget, holdout, retain1, retain2"):
        load_rows({"path": str(hub), "name": "raw", "split": "forgt"})
    with pytest.raises(DataError, match=r"subset 'verbmm'.*Did you mean: verbmem"):
        load_rows({"path": str(hub), "name": "verbmm", "split": "forget"})
    with pytest.raises(DataError, match=r"row 1 has no field 'answer' \(it has: prompt, gt\)|row 1 has no field 'answer' \(it has: gt, prompt\)"):
        load_rows({"path": str(hub), "name": "verbmem", "split": "forget"}, {"answer": str})
    with pytest.raises(DataError, match="data directory '/nope' does not exist"):
        load_rows({"path": "/nope", "name": "raw", "split": "forget"})
    with pytest.raises(DataError, match="does not exist; pass paths.wmdp=DIR"):
        load_rows({"path": "text", "data_files": str(tmp_path / "missing.jsonl")})


def test_wmdp_jsonl_lines_objects_strings_and_raw_text(tmp_path):
    wmdp = write_synthetic_wmdp(tmp_path / "wmdp")
    bio, _ = load_rows({"path": "text", "data_files": str(wmdp / "wmdp-corpora" / "bio-forget-corpus.jsonl")}, {"text": str})
    assert set(bio[0]) == {"title", "abstract", "text", "doi"} and not bio[0]["text"].startswith("{")
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text('{"text": "an object line"}\n"a JSON string"\nnot JSON at all\n\n')
    rows, _ = load_rows({"path": "text", "data_files": str(mixed)}, {"text": str})
    assert [r["text"] for r in rows] == ["an object line", "a JSON string", "not JSON at all"]
    plain = tmp_path / "plain.txt"
    plain.write_text("line one\n{\"text\": \"kept verbatim\"}\n")
    rows, _ = load_rows({"path": "text", "data_files": str(plain)})
    assert [r["text"] for r in rows] == ["line one", '{"text": "kept verbatim"}']


# ---------------------------------------------------------------- tokenisation vs the reference
def test_pretraining_blocks_equal_the_reference_chunking(tok, muse_dirs):
    hub, _ = muse_dirs
    rows, _ = load_rows({"path": str(hub), "name": "raw", "split": "forget"})
    texts = [r["text"] for r in rows]
    for max_length in (64, 300, 2048):
        ds = PretrainingDataset({"path": str(hub), "name": "raw", "split": "forget"}, tok, max_length=max_length, name="MUSE_forget")
        ref = [ref_preprocess_pretraining_instance(tok, "", chunk, max_length) for chunk in ref_chunks(tok, texts, max_length)]
        ref = [(ids, labels) for ids, labels, _ in ref if any(lab != IGNORE for lab in labels)]  # the reference's empty tail has no target
        assert [(list(ids), list(labels)) for ids, labels in ds.items] == ref
        for item in (ds[i] for i in range(len(ds))):
            assert item["labels"][0] == IGNORE and torch.equal(item["labels"][1:], item["input_ids"][1:])  # every token trained
            assert len(item["input_ids"]) <= max_length
    exact = PretrainingDataset(rows=[{"text": "x" * 128}], tokenizer=tok, max_length=64)
    assert len(exact) == 2  # 128 tokens = 2 blocks; the reference adds an empty third one
    per_doc = PretrainingDataset(rows=rows, tokenizer=tok, max_length=50, chunk=False)
    assert len(per_doc) == len(rows) and all(len(ids) == 50 for ids, _ in per_doc.items)
    assert PretrainingDataset(rows=rows + [{"text": "tiny"}], tokenizer=tok, max_length=50, chunk=False, min_chars=4).rows == rows


def test_completion_encoding_equals_the_reference(tok, muse_dirs):
    hub, _ = muse_dirs
    ds = CompletionDataset({"path": str(hub), "name": "verbmem", "split": "forget"}, tok, prefix_key="prompt", text_key="gt",
                           max_length=40, insert_space=True)
    for row, (ids, labels), prompt in zip(ds.rows, ds.items, ds.prompts):
        assert (ids, labels, prompt) == ref_preprocess_pretraining_instance(tok, row["prompt"], row["gt"], 40, insert_space=True)
    ids, labels, prompt = encode_completion(tok, "", "abc", 2048)  # privleak documents: empty prefix, first token masked
    assert prompt == [] and labels == [IGNORE, ord("b"), ord("c")]


def test_fewshot_knowmem_prompt_equals_the_reference_and_muse_bench(tok):
    template = {"apply_chat_template": False, "user_start_tag": "Question: ", "user_end_tag": "\n", "asst_start_tag": "Answer: ",
                "asst_end_tag": "\n\n"}
    icl = [("Who?", "Ann"), ("Where?", "Oslo")]
    ids, labels, prompt = encode_fewshot_qa(tok, template, icl, "When?", "1999", 512)
    assert (ids, labels, prompt) == ref_chat_instance(tok, template, ["Who?", "Where?", "When?"], ["Ann", "Oslo", "1999"], 512)
    muse_bench_prompt = "".join(f"Question: {q}\nAnswer: {a}\n\n" for q, a in icl) + "Question: When?\nAnswer: "
    assert tok.decode(prompt) == muse_bench_prompt
    short = encode_fewshot_qa(tok, template, icl, "When?", "1999", 20)  # truncation as the reference: prompt cut, EOS appended
    assert short == ref_chat_instance(tok, template, ["Who?", "Where?", "When?"], ["Ann", "Oslo", "1999"], 20)
    chat_ids, chat_labels, chat_prompt = encode_fewshot_qa(tok, {"apply_chat_template": True}, icl, "When?", "1999", 512)
    rendered = tok.decode(chat_prompt)
    assert rendered.count("<|user|>") == 3 and rendered.count("<|assistant|>") == 3 and "Oslo" in rendered
    assert tok.decode([t for t in chat_labels if t != IGNORE], skip_special_tokens=True).strip() == "1999"


def test_muse_eval_samples_carry_prompts_and_ground_truths(tok, muse_dirs):
    hub, _ = muse_dirs
    cfg = {"data_path": str(hub), "verbmem": {"name": "verbmem", "split": "forget"},
           "knowmem_forget": {"name": "knowmem", "split": "forget_qa", "icl_split": "forget_qa_icl"},
           "privleak": {"name": "privleak"}}
    splits, files = load_muse_eval(cfg, tok, {"apply_chat_template": False})
    assert set(splits) == {"verbmem", "knowmem_forget", "privleak_forget", "privleak_holdout"}
    verb = load_rows({"path": str(hub), "name": "verbmem", "split": "forget"})[0]
    assert [s["ground_truth"] for s in splits["verbmem"]] == [r["gt"].strip() for r in verb]
    qa = load_rows({"path": str(hub), "name": "knowmem", "split": "forget_qa"})[0]
    assert [s["ground_truth"] for s in splits["knowmem_forget"]] == [r["answer"] for r in qa]
    for s in splits["verbmem"] + splits["knowmem_forget"]:
        assert s["input_ids"][: len(s["prompt_ids"])] == s["prompt_ids"]
    assert files["privleak_holdout"].endswith("privleak/holdout-00000-of-00001.parquet")


# ---------------------------------------------------------------- configs, collator, overlap
def test_muse_and_wmdp_dataset_configs_build(tok, muse_dirs, tmp_path):
    hub, _ = muse_dirs
    wmdp = write_synthetic_wmdp(tmp_path / "wmdp")
    paths = {"muse": str(hub), "wmdp": str(wmdp)}
    sizes = {}
    for n in ("MUSE_forget", "MUSE_retain", "MUSE_forget_scal", "MUSE_forget_sust", "MUSE_train", "MUSE_forget_verbmem",
              "MUSE_forget_knowmem", "MUSE_retain_knowmem", "WMDP_forget", "WMDP_retain"):
        name, spec = resolve_dataset_spec(n, paths)
        ds = build_text_dataset(name, spec, tok, {"apply_chat_template": False})
        sizes[n] = len(ds)
        assert ds[0]["input_ids"].shape == ds[0]["labels"].shape
    assert isinstance(build_text_dataset(*resolve_dataset_spec("MUSE_forget_knowmem", paths), tok, {}), QADataset)
    assert sizes["MUSE_forget_knowmem"] == len(load_rows({"path": str(hub), "name": "knowmem", "split": "forget_qa"})[0])


def test_pretraining_collator_trains_every_non_padding_token(tok):
    assert set(COLLATORS) == {"DataCollatorForSupervisedDataset", "DataCollatorForPretraining"}
    items = [{"input_ids": torch.tensor([5, 6, 7]), "labels": torch.tensor([IGNORE, IGNORE, 7])},
             {"input_ids": torch.tensor([8, 9]), "labels": torch.tensor([IGNORE, 9])}]
    batch = DataCollatorForPretraining(tok)(items)
    assert batch["labels"].tolist() == [[5, 6, 7], [8, 9, IGNORE]] and batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]


def test_forget_and_retain_documents_must_not_overlap(tok):
    forget = PretrainingDataset(rows=[{"text": "shared document"}, {"text": "only forget"}], tokenizer=tok, max_length=8)
    retain = PretrainingDataset(rows=[{"text": "shared document"}], tokenizer=tok, max_length=8)
    with pytest.raises(DataError, match=r"overlap in 1 document\(s\), first: 'shared document'"):
        check_forget_retain(forget, retain)
    check_forget_retain(forget, PretrainingDataset(rows=[{"text": "other"}], tokenizer=tok, max_length=8))


def test_json_array_rows_must_be_strings_or_objects(tmp_path):
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "forget.json").write_text(json.dumps([1, 2]))
    with pytest.raises(DataError, match="item 1 is a JSON int"):
        load_rows({"path": str(tmp_path), "name": "raw", "split": "forget"})


def test_reference_command_lines_name_experiments_with_the_yaml_suffix():
    from obliviate.cli import check_group_choices
    from obliviate.errors import UnknownNameError

    check_group_choices(["experiment=unlearn/muse/default.yaml", "experiment=unlearn/wmdp/default", "model=Llama-2-7b-hf",
                         "experiment=unlearn/muse/sustainabilty", "collator=DataCollatorForPretraining"])
    with pytest.raises(UnknownNameError, match="Did you mean: unlearn/muse/scalability"):
        check_group_choices(["experiment=unlearn/muse/scalabilty.yaml"])
