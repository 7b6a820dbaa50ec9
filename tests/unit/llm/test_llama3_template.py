"""The Llama-3.2-1B-Instruct config tokenises a TOFU sample exactly as the reference framework.

The tokenizer is built offline: a small byte-level BPE trained in-process with Llama 3's
pre-tokenisation regex, its special tokens (``<|begin_of_text|>`` added as BOS by the post
processor, as Llama 3's does), ``<|eot_id|>`` as eos (the Instruct models') and the real
Llama 3.2 Instruct chat template (``data/llama3_2_chat_template.jinja``, as shipped with the
model). The expected ids come from a port of the reference's ``preprocess_chat_instance``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

import obliviate.configs
from obliviate.data.text.qa import IGNORE_INDEX, QADataset, encode_qa

TEMPLATE = (Path(__file__).parent / "data" / "llama3_2_chat_template.jinja").read_text(encoding="utf-8")
MODEL_YAML = Path(obliviate.configs.__file__).parent / "model" / "Llama-3.2-1B-Instruct.yaml"
LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|"
                  r"\s+(?!\S)|\s+")
SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|eom_id|>",
            "<|python_tag|>", "<|finetune_right_pad_id|>"]
# forget10.json, row 1 (TOFU)
QUESTION = "What is the full name of the author born in Taipei, Taiwan on 05/11/1991 who writes in the genre of leadership?"
ANSWER = "The author's full name is Hsiao Yun-Hwa."


@pytest.fixture(scope="module")
def llama3_tokenizer():
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    corpus = [QUESTION, ANSWER, "Cutting Knowledge Date: December 2023\nToday Date: 10 Apr 2025\n\n", "You are a helpful assistant.",
              "user", "assistant", "system", "The author of the book is a writer born in the city."] * 20
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(corpus, trainer=trainer)
    bos = tok.token_to_id("<|begin_of_text|>")
    tok.post_processor = processors.TemplateProcessing(single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A <|begin_of_text|> $B",
                                                       special_tokens=[("<|begin_of_text|>", bos)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>",
                                   pad_token="<|finetune_right_pad_id|>")
    fast.chat_template = TEMPLATE
    return fast


def _ids(out):
    """``apply_chat_template(tokenize=True)`` returns ids (transformers 4) or a BatchEncoding (5)."""
    return list(out["input_ids"]) if hasattr(out, "keys") else list(out)


def reference_preprocess(tokenizer, template_config, prompt, response):
    """Port of the reference framework's ``data.utils.preprocess_chat_instance`` (training, one
    QA pair, ``apply_chat_template: True``)."""
    chat = []
    system_prompt = template_config.get("system_prompt", None)
    if system_prompt:
        chat += [{"role": "system", "content": system_prompt}]
    chat += [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
    date_str = template_config.get("date_string", None)
    date_info = {"date_string": date_str} if date_str is not None else {}
    chat_ids = _ids(tokenizer.apply_chat_template(chat, tokenize=True, add_generation_prompt=False, **date_info))
    prompt_ids = _ids(tokenizer.apply_chat_template(chat[:-1], tokenize=True, add_generation_prompt=True, **date_info))
    if chat_ids[-1] != tokenizer.eos_token_id:
        chat_ids += [tokenizer.eos_token_id]
    labels = [IGNORE_INDEX] * len(prompt_ids) + chat_ids[len(prompt_ids):]
    return chat_ids, labels


@pytest.fixture(scope="module")
def template_args():
    cfg = yaml.safe_load(MODEL_YAML.read_text(encoding="utf-8"))
    return cfg["template_args"]


def test_the_config_is_the_reference_one(template_args):
    assert template_args["apply_chat_template"] is True
    assert template_args["date_string"] == "10 Apr 2025" and template_args["system_prompt"] == "You are a helpful assistant."


def test_tofu_sample_ids_equal_the_reference_preprocessing(llama3_tokenizer, template_args):
    tok = llama3_tokenizer
    ids, labels = encode_qa(tok, QUESTION, ANSWER, template_args, max_length=512)
    ref_ids, ref_labels = reference_preprocess(tok, template_args, QUESTION, ANSWER)
    assert ids == ref_ids and labels == ref_labels
    text = tok.decode(ids)
    assert text.startswith("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\n"
                           "Today Date: 10 Apr 2025\n\nYou are a helpful assistant.<|eot_id|>")
    assert tok.decode([t for t in labels if t != IGNORE_INDEX]) == ANSWER + "<|eot_id|>"
    # one BOS, although the rendered template starts with it and the tokenizer adds one
    bos = tok.bos_token_id
    assert ids[0] == bos and ids.count(bos) == 1
    assert tok(text)["input_ids"][:2] == [bos, bos]  # what add_special_tokens=True would do


def test_tofu_dataset_with_the_config_gives_the_same_ids(llama3_tokenizer, template_args):
    ds = QADataset(rows=[{"question": QUESTION, "answer": ANSWER}], tokenizer=llama3_tokenizer, template_args=template_args)
    ref_ids, ref_labels = reference_preprocess(llama3_tokenizer, template_args, QUESTION, ANSWER)
    assert ds[0]["input_ids"].tolist() == ref_ids and ds[0]["labels"].tolist() == ref_labels


def test_tag_prompt_with_bos_text_gets_no_second_bos(llama3_tokenizer, template_args):
    """apply_chat_template=false: the tags start with ``<|begin_of_text|>`` (the config's
    system_prompt_with_special_tokens), so the tokenizer must not add another."""
    tok = llama3_tokenizer
    ids, labels = encode_qa(tok, QUESTION, ANSWER, {**template_args, "apply_chat_template": False})
    assert ids.count(tok.bos_token_id) == 1 and ids[0] == tok.bos_token_id
    assert tok.decode(ids).startswith(template_args["system_prompt_with_special_tokens"] + template_args["user_start_tag"] + QUESTION)
    assert tok.decode([t for t in labels if t != IGNORE_INDEX]) == ANSWER + "<|eot_id|>"
    # without a BOS in the text, the tokenizer's own BOS is kept (one)
    plain, _ = encode_qa(tok, QUESTION, ANSWER, {"apply_chat_template": False})
    assert plain[0] == tok.bos_token_id and plain.count(tok.bos_token_id) == 1
