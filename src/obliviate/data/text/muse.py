"""MUSE evaluation data (muse-bench/MUSE-News, MUSE-Books): verbmem, knowmem and privleak samples.

The hub data set (or a local directory in its layout, ``paths.muse=DIR``) has the subsets
``raw`` (forget / retain1 / retain2 / holdout documents), ``verbmem`` (``forget``: ``prompt``
+ ``gt``), ``knowmem`` (``forget_qa`` / ``retain_qa`` and their in-context examples
``*_qa_icl``: ``question`` + ``answer``), ``privleak`` (``forget`` / ``retain`` / ``holdout``
documents), ``scal`` / ``sust`` (``forget_1`` .. ``forget_4``) and ``train``.

Samples are tokenised as the reference framework does (see
:func:`obliviate.data.text.pretraining.encode_completion` and :func:`encode_fewshot_qa`) and
carry what the shared-pass evaluation needs: ``input_ids`` / ``labels`` (teacher forcing),
``prompt_ids`` (generation), ``ground_truth`` (ROUGE reference text), ``text`` (ZLib) and
``index``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from obliviate.data.text.pretraining import encode_completion
from obliviate.data.text.qa import DEFAULT_TAGS, IGNORE_INDEX, uses_chat_template
from obliviate.data.text.rawtext import MUSE_SCHEMAS, load_rows
from obliviate.errors import ConfigError

#: Hub ids of the two MUSE corpora (``data_split`` News / Books).
MUSE_HUB = {"News": "muse-bench/MUSE-News", "Books": "muse-bench/MUSE-Books"}
#: Evaluation sets of the ``muse`` evaluator (keys under ``eval.muse``).
MUSE_SETS = ("verbmem", "knowmem_forget", "knowmem_retain", "privleak")


def encode_fewshot_qa(tokenizer: Any, template_args: dict[str, Any] | None, icl: Sequence[tuple[str, str]], question: str, answer: str,
                      max_length: int | None = 512) -> tuple[list[int], list[int], list[int]]:
    """Few-shot QA as the reference's ``preprocess_chat_instance`` (MUSE knowmem).

    Without a chat template the prompt is ``system_prompt_with_special_tokens`` + for each
    in-context pair ``user_start_tag + q + user_end_tag + asst_start_tag + a + asst_end_tag``
    + ``user_start_tag + question + user_end_tag + asst_start_tag`` (MUSE's Llama-2 tags give
    ``"Question: q\\nAnswer: a\\n\\n" ... "Question: q\\nAnswer: "``, muse_bench's prompt); prompt
    and prompt + answer are tokenised with special tokens and cut at ``max_length``. With a
    chat template the pairs are earlier user/assistant turns. An EOS closes the answer.

    Returns:
        ``(input_ids, labels, prompt_ids)``: prompt + answer, labels ``-100`` on the prompt,
        and the prompt alone (the generation prompt).
    """
    targs = dict(template_args or {})
    if uses_chat_template(tokenizer, targs):
        chat = [{"role": "system", "content": targs["system_prompt"]}] if targs.get("system_prompt") else []
        for q, a in [*icl, (question, answer)]:
            chat += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
        extra = {"date_string": targs["date_string"]} if targs.get("date_string") else {}
        full_text = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=False, **extra)
        prompt_text = tokenizer.apply_chat_template(chat[:-1], tokenize=False, add_generation_prompt=True, **extra)
        full = list(tokenizer(full_text, add_special_tokens=False)["input_ids"])
        prompt = list(tokenizer(prompt_text, add_special_tokens=False)["input_ids"])
    else:
        tags = {k: (targs.get(k) if targs.get(k) is not None else v) for k, v in DEFAULT_TAGS.items()}
        text = targs.get("system_prompt_with_special_tokens") or ""
        for q, a in icl:
            text += tags["user_start_tag"] + q + tags["user_end_tag"] + tags["asst_start_tag"] + a + tags["asst_end_tag"]
        text += tags["user_start_tag"] + question + tags["user_end_tag"] + tags["asst_start_tag"]
        kw: dict[str, Any] = {"add_special_tokens": True}
        if max_length is not None:
            kw.update(max_length=int(max_length), truncation=True)
        full = list(tokenizer(text + answer, **kw)["input_ids"])
        prompt = list(tokenizer(text, **kw)["input_ids"])
    eos = tokenizer.eos_token_id
    if eos is not None and (not full or full[-1] != eos):
        full.append(eos)
    labels = [IGNORE_INDEX] * len(prompt) + full[len(prompt):]
    return full, labels[: len(full)], prompt


def _ground_truth(tokenizer: Any, labels: Sequence[int], prompt_ids: Sequence[int]) -> str:
    """The reference's ROUGE reference text: decoded label tokens minus the decoded prompt, stripped."""
    kw = {"skip_special_tokens": True, "clean_up_tokenization_spaces": True}
    full = tokenizer.decode([t for t in labels if t != IGNORE_INDEX], **kw)
    return full.replace(tokenizer.decode(list(prompt_ids), **kw), "").strip()


def _hf(root: str, spec: dict[str, Any], split_key: str = "split") -> dict[str, Any]:
    return {"path": spec.get("path") or root, "name": spec.get("name"), "split": spec[split_key]}


def load_muse_eval(ecfg: dict[str, Any], tokenizer: Any, template_args: dict[str, Any] | None) -> tuple[dict[str, list[dict]], dict[str, str]]:
    """Tokenised samples of every MUSE evaluation set configured under ``eval.muse``.

    Returns:
        ``(splits, files)``; ``splits`` has ``verbmem``, ``knowmem_forget``, ``knowmem_retain``,
        ``privleak_forget`` and ``privleak_holdout`` (a set configured as ``null`` is absent).

    Raises:
        DataError: a missing file or field (named); ConfigError: no set configured.
    """
    root = ecfg.get("data_path")
    limit = ecfg.get("max_samples")
    splits: dict[str, list[dict[str, Any]]] = {}
    files: dict[str, str] = {}

    def rows_of(key: str, hf: dict[str, Any], required: dict[str, type]) -> list[dict[str, Any]]:
        if not hf.get("path"):
            raise ConfigError(f"eval.muse.{key} has no data path; set paths.muse=DIR or eval.muse.data_path")
        rows, source = load_rows(hf, required, what=f"eval.muse.{key}")
        files[key] = source
        return rows[: int(limit)] if limit else rows

    spec = ecfg.get("verbmem")
    if spec:
        pk, tk = spec.get("prompt_key", "prompt"), spec.get("text_key", "gt")
        samples = []
        for i, row in enumerate(rows_of("verbmem", _hf(root, spec), {pk: str, tk: str})):
            ids, labels, prompt = encode_completion(tokenizer, row[pk], row[tk], spec.get("max_length", 2048), bool(spec.get("insert_space", True)))
            samples.append({"input_ids": ids, "labels": labels, "prompt_ids": prompt, "index": i,
                            "ground_truth": _ground_truth(tokenizer, labels, prompt), "text": row[tk]})
        splits["verbmem"] = samples
    for key in ("knowmem_forget", "knowmem_retain"):
        spec = ecfg.get(key)
        if not spec:
            continue
        qk, ak = spec.get("question_key", "question"), spec.get("answer_key", "answer")
        icl: list[tuple[str, str]] = []
        if spec.get("icl_split"):
            icl = [(r[qk], r[ak]) for r in load_rows(_hf(root, spec, "icl_split"), {qk: str, ak: str}, what=f"eval.muse.{key}")[0]]
        samples = []
        for i, row in enumerate(rows_of(key, _hf(root, spec), {qk: str, ak: str})):
            ids, labels, prompt = encode_fewshot_qa(tokenizer, template_args, icl, row[qk], row[ak], spec.get("max_length", 512))
            samples.append({"input_ids": ids, "labels": labels, "prompt_ids": prompt, "index": i,
                            "ground_truth": _ground_truth(tokenizer, ids, prompt), "text": row[ak], "question": row[qk]})
        splits[key] = samples
    spec = ecfg.get("privleak")
    if spec:
        tk = spec.get("text_key", "text")
        for side in ("forget", "holdout"):
            hf = {"path": spec.get("path") or root, "name": spec.get("name", "privleak"), "split": spec.get(f"{side}_split", side)}
            samples = []
            for i, row in enumerate(rows_of(f"privleak_{side}", hf, {tk: str})):
                ids, labels, prompt = encode_completion(tokenizer, "", row[tk], spec.get("max_length", 2048))
                samples.append({"input_ids": ids, "labels": labels, "prompt_ids": prompt, "index": i, "text": row[tk]})
            splits[f"privleak_{side}"] = samples
    if not splits:
        raise ConfigError(f"the MUSE evaluator has no evaluation set; configure one of eval.muse.{{{', '.join(MUSE_SETS)}}}")
    return splits, files


__all__ = ["MUSE_HUB", "MUSE_SCHEMAS", "MUSE_SETS", "encode_fewshot_qa", "load_muse_eval"]
