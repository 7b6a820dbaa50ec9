"""QA tokenisation (prompt masked, answer trained), QA datasets and the supervised collator.

One QA pair becomes ``input_ids = prompt_ids + answer_ids`` with ``labels = [-100] *
len(prompt_ids) + answer_ids`` (see :func:`encode_qa`: the reference framework's ids whenever
the prompt's tokens are a prefix of the whole text's). With a chat template (when the
tokenizer has one, unless ``template_args.apply_chat_template`` is false) the prompt is the
rendered system + user turns plus the generation prompt (``system_prompt`` and
``date_string`` passed to the template), and the answer part is the rest of the rendered
conversation (answer + end-of-turn tokens). Without one, the reference framework's tags are
used (``user_start_tag`` + question + ``user_end_tag`` + ``asst_start_tag``, after
``system_prompt_with_special_tokens``). Either way the answer ends with eos (appended when the
last token is not eos, as in the reference framework; ``asst_end_tag`` only closes few-shot
turns).

Tokenised datasets are cached in memory per process and, with a ``cache_dir``, on disk
under ``<cache_dir>/tokenized/<key>.npz``; the key hashes the tokenizer, the template, the
keys, ``max_length`` and the rows' content.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from obliviate.data import DATASETS
from obliviate.data.text.tofu import field_names, load_idk_answers, load_qa_rows, validate_rows
from obliviate.errors import ConfigError, DataError
from obliviate.io import atomic_write_bytes

log = logging.getLogger(__name__)

IGNORE_INDEX = -100
IDK_KEY = "idk"  # same key as obliviate.methods._common.IDK_KEY
ENCODING_VERSION = 2
DEFAULT_TAGS = {"user_start_tag": "Question: ", "user_end_tag": "\n", "asst_start_tag": "Answer: ", "asst_end_tag": ""}
_MEMORY_CACHE: dict[str, list[list[tuple[np.ndarray, np.ndarray]]]] = {}
_MEMORY_CACHE_MAX = 64


# ----------------------------------------------------------------------------- one QA pair
def uses_chat_template(tokenizer: Any, template_args: dict[str, Any] | None) -> bool:
    """``apply_chat_template`` true/false as configured; unset/"auto": iff the tokenizer has one."""
    flag = (template_args or {}).get("apply_chat_template")
    if flag is None or flag == "auto":
        return bool(getattr(tokenizer, "chat_template", None))
    if flag and not getattr(tokenizer, "chat_template", None):
        raise ConfigError("template_args.apply_chat_template is true but the tokenizer has no chat template")
    return bool(flag)


def _chat_texts(tokenizer: Any, question: str, answer: str, targs: dict[str, Any]) -> tuple[str, str]:
    msgs = [{"role": "system", "content": targs["system_prompt"]}] if targs.get("system_prompt") else []
    msgs.append({"role": "user", "content": question})
    extra = {"date_string": targs["date_string"]} if targs.get("date_string") else {}
    prompt = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True, **extra)
    full = tokenizer.apply_chat_template([*msgs, {"role": "assistant", "content": answer}], tokenize=False, **extra)
    if full.startswith(prompt):
        return prompt, full[len(prompt):]
    # Templates that render the last turn differently: split at the answer's position.
    cut = full.rfind(answer)
    if cut < 0:
        raise DataError("the chat template does not reproduce the answer text; set template_args.apply_chat_template=false")
    return full[:cut], full[cut:]


def _encode(tokenizer: Any, text: str, special: bool) -> list[int]:
    """Token ids of ``text``; with ``special`` the tokenizer's special tokens (BOS) are added
    unless the text already starts with the BOS token (a tag that holds it)."""
    bos = getattr(tokenizer, "bos_token", None)
    add = special and not (bos and text.startswith(bos))
    return list(tokenizer(text, add_special_tokens=add)["input_ids"])


def encode_qa(tokenizer: Any, question: str, answer: str, template_args: dict[str, Any] | None = None,
              max_length: int | None = 512) -> tuple[list[int], list[int]]:
    """Tokenise one QA pair for training, as the reference framework's ``preprocess_chat_instance``.

    The whole text (prompt + answer) and the prompt are tokenised; when the prompt's tokens
    are a prefix of the whole text's (the usual case), ``input_ids`` are the whole text's and
    the prompt positions get label ``-100`` — exactly the reference's ids and labels. When
    they are not (a token spans the border, e.g. a prompt ending in ``"Answer: "``), prompt
    and answer are tokenised separately instead, so the prompt tokens stay those a model is
    given at generation time and no answer token is lost to the prompt (the reference masks
    it). Rendered chat templates are tokenised without special tokens (the template holds
    them, as the reference's ``apply_chat_template``); tag prompts with them, unless the text
    already starts with the BOS token (never two BOS). Eos is appended when the last token is
    not eos (as the reference).

    Returns:
        ``(input_ids, labels)``; ``labels`` is ``-100`` on prompt tokens and the token id on
        answer tokens (including the end-of-turn/eos tokens that close the answer).
    """
    targs = dict(template_args or {})
    chat = uses_chat_template(tokenizer, targs)
    if chat:
        prompt_text, answer_text = _chat_texts(tokenizer, question, answer, targs)
    else:
        tags = {k: (targs.get(k) if targs.get(k) is not None else v) for k, v in DEFAULT_TAGS.items()}
        prompt_text = (targs.get("system_prompt_with_special_tokens") or "") + tags["user_start_tag"] + question + tags["user_end_tag"] + tags["asst_start_tag"]
        answer_text = answer
    prompt_ids = _encode(tokenizer, prompt_text, special=not chat)
    full_ids = _encode(tokenizer, prompt_text + answer_text, special=not chat)
    if full_ids[: len(prompt_ids)] == prompt_ids and len(full_ids) > len(prompt_ids):
        answer_ids = full_ids[len(prompt_ids):]
    else:
        answer_ids = list(tokenizer(answer_text, add_special_tokens=False)["input_ids"])
    eos = tokenizer.eos_token_id
    if eos is not None and (not answer_ids or answer_ids[-1] != eos):
        answer_ids = [*answer_ids, eos]
    ids = prompt_ids + answer_ids
    labels = [IGNORE_INDEX] * len(prompt_ids) + answer_ids
    if max_length is not None and len(ids) > int(max_length):
        ids, labels = ids[: int(max_length)], labels[: int(max_length)]
    return ids, labels


# ----------------------------------------------------------------------------- cached encoding
def rows_hash(rows: Sequence[dict[str, Any]], keys: Sequence[str]) -> str:
    """Content hash of the ``keys`` fields of ``rows`` (order-sensitive)."""
    h = hashlib.sha256()
    for row in rows:
        h.update(json.dumps([row.get(k) for k in keys], ensure_ascii=False).encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest()


def _cache_key(tokenizer: Any, template_args: dict, question_key: str, answer_key: str, max_length: int | None, rows: Sequence[dict]) -> str:
    from obliviate.models.llm import tokenizer_fingerprint

    payload = {"v": ENCODING_VERSION, "tok": tokenizer_fingerprint(tokenizer), "template": template_args,
               "q": question_key, "a": answer_key, "max_length": max_length, "rows": rows_hash(rows, (question_key, answer_key))}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode("utf-8")).hexdigest()[:24]


def _to_npz(encoded: list[list[tuple[np.ndarray, np.ndarray]]]) -> bytes:
    counts = np.array([len(opts) for opts in encoded], dtype=np.int64)
    seqs = [s for opts in encoded for s in opts]
    lengths = np.array([len(ids) for ids, _ in seqs], dtype=np.int64)
    ids = np.concatenate([s[0] for s in seqs]) if seqs else np.zeros(0, np.int64)
    labels = np.concatenate([s[1] for s in seqs]) if seqs else np.zeros(0, np.int64)
    buf = io.BytesIO()
    np.savez(buf, counts=counts, lengths=lengths, ids=ids, labels=labels)
    return buf.getvalue()


def _from_npz(path: Path) -> list[list[tuple[np.ndarray, np.ndarray]]]:
    with np.load(path, allow_pickle=False) as z:
        counts, lengths, ids, labels = z["counts"], z["lengths"], z["ids"], z["labels"]
    bounds = np.concatenate([[0], np.cumsum(lengths)])
    seqs = [(ids[bounds[i]:bounds[i + 1]], labels[bounds[i]:bounds[i + 1]]) for i in range(len(lengths))]
    out, pos = [], 0
    for c in counts:
        out.append(seqs[pos:pos + int(c)])
        pos += int(c)
    return out


def encode_rows(rows: Sequence[dict[str, Any]], tokenizer: Any, template_args: dict[str, Any] | None, question_key: str = "question",
                answer_key: str = "answer", max_length: int | None = 512, cache_dir: str | Path | None = None) -> list[list[tuple[np.ndarray, np.ndarray]]]:
    """Encode every row (one sequence per answer; a list-valued answer gives one per option), cached."""
    targs = dict(template_args or {})
    key = _cache_key(tokenizer, targs, question_key, answer_key, max_length, rows)
    if key in _MEMORY_CACHE:
        return _MEMORY_CACHE[key]
    file = Path(cache_dir).expanduser() / "tokenized" / f"{key}.npz" if cache_dir else None
    if file is not None and file.is_file():
        try:
            encoded = _from_npz(file)
        except (OSError, ValueError, KeyError):
            log.warning("ignoring unreadable tokenisation cache %s", file)
            encoded = None
        if encoded is not None and len(encoded) == len(rows):
            _remember(key, encoded)
            return encoded
    encoded, truncated = [], 0
    for row in rows:
        answers = row[answer_key] if isinstance(row[answer_key], list) else [row[answer_key]]
        opts = []
        for ans in answers:
            ids, labels = encode_qa(tokenizer, row[question_key], ans, targs, max_length)
            truncated += all(lab == IGNORE_INDEX for lab in labels)
            opts.append((np.asarray(ids, dtype=np.int64), np.asarray(labels, dtype=np.int64)))
        encoded.append(opts)
    if truncated:
        log.warning("%d sequence(s) lost every answer token to max_length=%s; raise max_length", truncated, max_length)
    if file is not None:
        atomic_write_bytes(file, _to_npz(encoded))
    _remember(key, encoded)
    return encoded


def _remember(key: str, encoded: list) -> None:
    if len(_MEMORY_CACHE) >= _MEMORY_CACHE_MAX:
        _MEMORY_CACHE.pop(next(iter(_MEMORY_CACHE)))
    _MEMORY_CACHE[key] = encoded


# ----------------------------------------------------------------------------- datasets
def _check_answers(rows: Sequence[dict[str, Any]], answer_key: str, source: str) -> None:
    """Every row's ``answer_key`` is a string or a non-empty list of strings."""
    for i, row in enumerate(rows, 1):
        if answer_key not in row:
            raise DataError(f"{source}: row {i} has no field '{answer_key}' (it has: {field_names(row)})")
        value = row[answer_key]
        ok = isinstance(value, str) or (isinstance(value, list) and value and all(isinstance(v, str) for v in value))
        if not ok:
            raise DataError(f"{source}: row {i} field '{answer_key}' must be a string or a list of strings, got {type(value).__name__}")


def _item(ids: np.ndarray, labels: np.ndarray, index: int) -> dict[str, Any]:
    return {"input_ids": torch.from_numpy(ids), "labels": torch.from_numpy(labels), "index": index}


@DATASETS.register("QADataset", track="llm")
class QADataset(Dataset):
    """Tokenised question/answer pairs (TOFU and any QA data with the same layout).

    Args:
        hf_args: ``{path, name, split}`` (hub id or local directory of ``<name>.json`` /
            ``<name>.jsonl``); a list of names concatenates those files (e.g. forget + retain).
        tokenizer: The model's tokenizer.
        template_args: The model config's ``template_args``.
        question_key, answer_key: Fields holding the question and the answer (a list-valued
            answer field, e.g. ``perturbed_answer``, gives one sequence per option).
        max_length: Truncation length of prompt + answer.
        cache_dir: Where tokenised data is cached on disk (``None``: memory only).
        rows: Rows given directly instead of ``hf_args``.
        name: Display name (errors, logs).
    """

    def __init__(self, hf_args: dict[str, Any] | None = None, tokenizer: Any = None, template_args: dict[str, Any] | None = None,
                 question_key: str = "question", answer_key: str = "answer", max_length: int | None = 512,
                 cache_dir: str | Path | None = None, rows: list[dict[str, Any]] | None = None, name: str = "qa", **_: Any) -> None:
        if tokenizer is None:
            raise ConfigError(f"dataset {name} needs a tokenizer")
        source = name
        if rows is None:
            hf = dict(hf_args or {})
            if "path" not in hf or "name" not in hf:
                raise ConfigError(f"dataset {name}: hf_args needs 'path' and 'name' (got {sorted(hf)})")
            if hf["path"] in (None, "", "None"):
                raise ConfigError(f"dataset {name} has no data path (hf_args.path); set the paths.* key its config reads, "
                                  "e.g. paths.qa=DIR for your own QA files")
            names = list(hf["name"]) if isinstance(hf["name"], (list, tuple)) else [hf["name"]]
            rows = [r for n in names for r in load_qa_rows(hf["path"], n, hf.get("split", "train"), {question_key: str})]
            source = f"{hf['path']}/{'+'.join(map(str, names))}"
        else:
            validate_rows(rows, {question_key: str}, name)
        _check_answers(rows, answer_key, source)
        self.rows, self.name = rows, name
        self.question_key, self.answer_key = question_key, answer_key
        self.tokenizer, self.template_args, self.max_length = tokenizer, dict(template_args or {}), max_length
        self.encoded = encode_rows(rows, tokenizer, self.template_args, question_key, answer_key, max_length, cache_dir)
        self.multi_answer = any(isinstance(r[answer_key], list) for r in rows)
        self.collate_fn = DataCollatorForSupervisedDataset(tokenizer)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, Any] | list[dict[str, Any]]:
        opts = self.encoded[i]
        if self.multi_answer:
            return [{**_item(ids, labels, i), "option_index": k} for k, (ids, labels) in enumerate(opts)]
        return _item(*opts[0], i)

    def content_hash(self) -> str:
        """Hash of the question/answer content (recorded in run metrics)."""
        return rows_hash(self.rows, (self.question_key, self.answer_key))[:16]


@DATASETS.register("QAwithIdkDataset", track="llm")
class QAwithIdkDataset(QADataset):
    """QA pairs plus an "I don't know" answer per question (IdK / IdkDPO baselines).

    Items are the QA item plus ``"idk"``: the same question answered with a refusal drawn
    deterministically per row from ``idk_path`` (``seed`` and row index decide), so
    ``batch["forget"]["idk"]`` is a batch of refusals in the same row order (the data
    contract of :mod:`obliviate.methods.idk`). ``return_original=False`` returns the refusal
    item alone.
    """

    def __init__(self, idk_path: str | None = None, return_original: bool = True, seed: int = 0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.idk_answers = load_idk_answers(idk_path)
        self.return_original = return_original
        picks = [int(np.random.default_rng([seed, i]).integers(len(self.idk_answers))) for i in range(len(self.rows))]
        alt_rows = [{"question": r[self.question_key], "answer": self.idk_answers[k]} for r, k in zip(self.rows, picks)]
        self.idk = encode_rows(alt_rows, self.tokenizer, self.template_args, "question", "answer", self.max_length,
                                     kwargs.get("cache_dir"))

    def __getitem__(self, i: int) -> dict[str, Any]:
        alt = _item(*self.idk[i][0], i)
        if not self.return_original:
            return alt
        item = super().__getitem__(i)
        if isinstance(item, list):
            raise ConfigError(f"{self.name}: IDK alternatives need a single-answer field, not '{self.answer_key}'")
        return {**item, IDK_KEY: alt}


def build_text_dataset(name: str, spec: dict[str, Any], tokenizer: Any, template_args: dict[str, Any] | None,
                       cache_dir: str | Path | None = None) -> QADataset:
    """Instantiate a resolved dataset config (see :func:`obliviate.data.text.tofu.resolve_dataset_spec`)."""
    handler = spec["handler"]
    cls = DATASETS.get(handler)
    if DATASETS.meta(handler).get("track") != "llm":
        raise ConfigError(f"dataset handler '{handler}' is not a text dataset; text handlers: {', '.join(DATASETS.names(track='llm'))}")
    return cls(**dict(spec.get("args") or {}), tokenizer=tokenizer, template_args=template_args, cache_dir=cache_dir, name=name)


# ----------------------------------------------------------------------------- collator
class DataCollatorForSupervisedDataset:
    """Pads QA items into a batch: ``input_ids``, ``attention_mask``, ``labels`` (+ ``index``).

    The attention mask comes from each sequence's length, never from comparing ids with the
    pad id (pad may equal eos, which also closes every chat turn inside the prompt). Labels
    are ``-100`` on padding. Items that are lists (several answers per question) are
    flattened, with ``index`` / ``option_index`` telling which row and option each sequence
    is. Nested dict fields (``idk``) are collated recursively.

    Args:
        tokenizer: Supplies ``pad_token_id`` (0 if it has none; masked anyway).
        padding_side: "right" for training, "left" for batched generation.
    """

    def __init__(self, tokenizer: Any = None, padding_side: str = "right", **_: Any) -> None:
        if padding_side not in ("left", "right"):
            raise ConfigError(f"collator padding_side must be 'left' or 'right', got '{padding_side}'")
        pad = getattr(tokenizer, "pad_token_id", None)
        self.pad_id = int(pad) if pad is not None else 0
        self.padding_side = padding_side

    def _pad(self, seqs: list[torch.Tensor], value: int) -> torch.Tensor:
        width = max(len(s) for s in seqs)
        out = torch.full((len(seqs), width), value, dtype=torch.long)
        for row, s in enumerate(seqs):
            if self.padding_side == "right":
                out[row, : len(s)] = s
            elif len(s):
                out[row, width - len(s):] = s
        return out

    def __call__(self, items: Sequence[Any]) -> dict[str, Any]:
        if items and isinstance(items[0], list):
            items = [opt for it in items for opt in it]
        ids = [torch.as_tensor(it["input_ids"], dtype=torch.long) for it in items]
        batch: dict[str, Any] = {
            "input_ids": self._pad(ids, self.pad_id),
            "attention_mask": self._pad([torch.ones(len(s), dtype=torch.long) for s in ids], 0),
        }
        if "labels" in items[0]:
            batch["labels"] = self._pad([torch.as_tensor(it["labels"], dtype=torch.long) for it in items], IGNORE_INDEX)
        for key in items[0]:
            if key in batch:
                continue
            values = [it[key] for it in items]
            if isinstance(values[0], dict):
                batch[key] = self(values)
            elif isinstance(values[0], (int, np.integer)):
                batch[key] = torch.tensor(values, dtype=torch.long)
            else:
                batch[key] = values
        return batch
