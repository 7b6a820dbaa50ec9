"""Raw-text (non-QA) data: the reference framework's ``PretrainingDataset`` and ``CompletionDataset``.

- :class:`PretrainingDataset` (MUSE ``raw`` / ``scal`` / ``sust``, WMDP corpora): the documents
  are joined with ``"\\n\\n"``, tokenised once without special tokens and cut into blocks of
  ``max_length`` tokens; each block (after the tokenizer's BOS, if it adds one) is one
  training sequence whose every token is trained (the first token of a sequence has no
  prediction, so its label is ``-100``). ``chunk=false`` keeps one sequence per document,
  truncated to ``max_length`` (the WMDP reference's RMU data).
- :class:`CompletionDataset` (MUSE ``verbmem``): ``prefix + " " + text`` per row, the prefix
  tokens masked, as the reference's ``preprocess_pretraining_instance``.
- :class:`DataCollatorForPretraining`: pads like the supervised collator but trains every
  non-padding token of any dataset (labels = input ids), e.g. QA pairs as plain text.

Differences from the reference (documented in docs/llm.md): blocks are kept as token ids
(the reference decodes each block to text and tokenises it again, which can change tokens
at block edges) and no empty last block is produced when the token count is a multiple of
``max_length`` (the reference then yields a sequence with no trained token).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import Dataset

from obliviate.data import DATASETS
from obliviate.data.text.qa import IGNORE_INDEX, DataCollatorForSupervisedDataset
from obliviate.data.text.rawtext import load_rows
from obliviate.errors import ConfigError, DataError


def bos_prefix(tokenizer: Any) -> list[int]:
    """The ids the tokenizer adds before a text (``[bos]`` for Llama, ``[]`` for GPT-2 style)."""
    return list(tokenizer("", add_special_tokens=True)["input_ids"])


def encode_completion(tokenizer: Any, prefix: str, text: str, max_length: int | None = 2048,
                      insert_space: bool = False) -> tuple[list[int], list[int], list[int]]:
    """Tokenise ``prefix (+ " ") + text`` as the reference's ``preprocess_pretraining_instance``.

    Returns:
        ``(input_ids, labels, prefix_ids)``: the whole sequence (special tokens added, cut to
        ``len(prefix_ids) + max_length``), labels ``-100`` on the prefix (at least on the first
        token, which has no prediction), and the prefix alone (the generation prompt).
    """
    full = list(tokenizer(prefix + (" " if insert_space else "") + text, add_special_tokens=True)["input_ids"])
    prefix_ids = list(tokenizer(prefix, add_special_tokens=True)["input_ids"])
    if max_length is not None:
        full = full[: len(prefix_ids) + int(max_length)]
    masked = max(len(prefix_ids), 1)
    labels = [IGNORE_INDEX] * min(masked, len(full)) + full[masked:]
    return full, labels, prefix_ids


def _doc_key(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


class _TextDataset(Dataset):
    """Shared attributes the LLM pipeline reads (``rows``, ``name``, ``content_hash``, overlap keys)."""

    text_key = "text"
    rows: list[dict[str, Any]]
    items: list[tuple[list[int], list[int]]]
    name: str

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Any]:
        ids, labels = self.items[i]
        return {"input_ids": torch.tensor(ids, dtype=torch.long), "labels": torch.tensor(labels, dtype=torch.long), "index": i}

    def overlap_keys(self) -> list[str]:
        """One content key per source document (forget and retain must not share one)."""
        return [f"{str(r.get(self.text_key, ''))[:60]!r} ({_doc_key(str(r.get(self.text_key, '')))[:10]})" for r in self.rows]

    def content_hash(self) -> str:
        """Hash of the documents (recorded in run metrics)."""
        h = hashlib.sha256()
        for r in self.rows:
            h.update(str(r.get(self.text_key, "")).encode("utf-8"))
            h.update(b"\n")
        return h.hexdigest()[:16]


def _load_texts(hf_args: dict[str, Any] | None, rows: list[dict[str, Any]] | None, keys: dict[str, type], name: str) -> tuple[list[dict], str]:
    if rows is not None:
        return rows, name
    if not hf_args:
        raise ConfigError(f"dataset {name} needs hf_args ({{path, name, split}} or {{data_files}})")
    return load_rows(hf_args, keys, what=name)


@DATASETS.register("PretrainingDataset", track="llm")
class PretrainingDataset(_TextDataset):
    """Raw documents cut into ``max_length``-token blocks, every token trained.

    Args:
        hf_args: Where the documents are (see :mod:`obliviate.data.text.rawtext`).
        tokenizer: The model's tokenizer.
        text_key: Field holding each document's text.
        max_length: Tokens per block (without the BOS the tokenizer adds).
        chunk: Join and cut into blocks (reference); ``False``: one sequence per document,
            truncated to ``max_length``.
        min_chars: Drop documents of at most this many characters (the WMDP reference's
            ``min_len``; 0 keeps every non-empty one).
        rows: Documents given directly instead of ``hf_args``.
        name: Display name.
    """

    def __init__(self, hf_args: dict[str, Any] | None = None, tokenizer: Any = None, text_key: str = "text", max_length: int = 2048,
                 chunk: bool = True, min_chars: int = 0, rows: list[dict[str, Any]] | None = None, name: str = "pretraining",
                 **_: Any) -> None:
        if tokenizer is None:
            raise ConfigError(f"dataset {name} needs a tokenizer")
        if int(max_length) < 1:
            raise ConfigError(f"dataset {name}: max_length must be >= 1, got {max_length}")
        self.text_key, self.name, self.tokenizer, self.max_length = text_key, name, tokenizer, int(max_length)
        docs, self.source = _load_texts(hf_args, rows, {text_key: str}, name)
        self.rows = [r for r in docs if len(str(r[text_key])) > int(min_chars)]
        if not self.rows:
            raise DataError(f"{name}: no document longer than min_chars={min_chars} in {self.source}")
        prefix = bos_prefix(tokenizer)
        masked = max(len(prefix), 1)
        if chunk:
            ids = list(tokenizer("\n\n".join(str(r[text_key]) for r in self.rows), add_special_tokens=False)["input_ids"])
            blocks = [ids[i : i + self.max_length] for i in range(0, len(ids), self.max_length)]
        else:
            blocks = [list(tokenizer(str(r[text_key]), add_special_tokens=False)["input_ids"])[: self.max_length] for r in self.rows]
        self.items = []
        for block in blocks:
            seq = prefix + block
            if len(seq) > masked:
                self.items.append((seq, [IGNORE_INDEX] * masked + seq[masked:]))
        if not self.items:
            raise DataError(f"{name}: the documents in {self.source} tokenise to nothing")
        self.collate_fn = DataCollatorForSupervisedDataset(tokenizer)


@DATASETS.register("CompletionDataset", track="llm")
class CompletionDataset(_TextDataset):
    """``prefix + text`` per row, prefix tokens masked (MUSE verbmem: ``prompt`` + ``gt``).

    Args:
        hf_args: Where the rows are (see :mod:`obliviate.data.text.rawtext`).
        tokenizer: The model's tokenizer.
        prefix_key: Field of the prefix (a missing field is the empty prefix, as the reference).
        text_key: Field of the continuation.
        max_length: Tokens kept after the prefix.
        insert_space: Put a space between prefix and text.
        rows: Rows given directly instead of ``hf_args``.
        name: Display name.
    """

    def __init__(self, hf_args: dict[str, Any] | None = None, tokenizer: Any = None, prefix_key: str = "prompt", text_key: str = "text",
                 max_length: int = 2048, insert_space: bool = False, rows: list[dict[str, Any]] | None = None,
                 name: str = "completion", **_: Any) -> None:
        if tokenizer is None:
            raise ConfigError(f"dataset {name} needs a tokenizer")
        self.text_key, self.prefix_key, self.name, self.tokenizer = text_key, prefix_key, name, tokenizer
        self.rows, self.source = _load_texts(hf_args, rows, {text_key: str}, name)
        self.items, self.prompts = [], []
        for row in self.rows:
            ids, labels, prefix_ids = encode_completion(tokenizer, str(row.get(prefix_key) or ""), str(row[text_key]), max_length, insert_space)
            self.items.append((ids, labels))
            self.prompts.append(prefix_ids)
        self.collate_fn = DataCollatorForSupervisedDataset(tokenizer)


class DataCollatorForPretraining(DataCollatorForSupervisedDataset):
    """Pads a batch and trains every non-padding token (labels = input ids; pads -100).

    The raw-text collator: a dataset's own labels (e.g. a masked QA prompt) are replaced, so
    any tokenised data trains as plain text. The first token of a sequence has no prediction
    (causal shift), whatever its label.
    """

    def __call__(self, items: Sequence[Any]) -> dict[str, Any]:
        batch = super().__call__(items)
        batch["labels"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, IGNORE_INDEX)
        return batch


#: Collators of the LLM track, by config name (``collator=<name>``).
COLLATORS: dict[str, type] = {
    "DataCollatorForSupervisedDataset": DataCollatorForSupervisedDataset,
    "DataCollatorForPretraining": DataCollatorForPretraining,
}

