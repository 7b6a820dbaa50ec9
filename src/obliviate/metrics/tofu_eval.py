"""TOFU evaluation from the shared passes of :class:`~obliviate.metrics.runner.ForwardRunner`.

:func:`evaluate_tofu` builds one group of sequences per question (the answer, the paraphrased
and the perturbed answers), scores every group in one teacher-forced pass, asks each sequence
only for what a metric reads (argmax for memorisation and generation drafts, vocabulary
statistics for Min-K%++), generates the ROUGE answers in batches (resumed after the tokens
teacher forcing already fixes), and returns the reference framework's schema.
"""

from __future__ import annotations

import os
from typing import Any

from torch import nn

from obliviate.errors import DataError
from obliviate.metrics.runner import IGNORE_INDEX, ForwardRunner, TokenRecord, _answer_start, greedy_draft
from obliviate.metrics.tofu import SplitValues, forget_privacy_results, load_retain_logs, retain_reference_results, split_results

SPLIT_ALIASES = {
    "forget": "forget",
    "retain": "retain",
    "ra": "ra",
    "real_authors": "ra",
    "wf": "wf",
    "world_facts": "wf",
    "holdout": "holdout",
}


def _answer_text(tokenizer: Any, sample: dict[str, Any]) -> str:
    if sample.get("answer") is not None:
        return str(sample["answer"])
    tokens = [t for t in sample["labels"] if t != IGNORE_INDEX]
    return tokenizer.decode(tokens, skip_special_tokens=True).strip()


def _eos_ids(model: nn.Module, tokenizer: Any) -> list[int]:
    ids = set()
    gen_cfg = getattr(model, "generation_config", None)
    for src in (getattr(tokenizer, "eos_token_id", None), getattr(gen_cfg, "eos_token_id", None)):
        ids |= {int(e) for e in (src if isinstance(src, (list, tuple)) else [src]) if e is not None}
    return sorted(ids)


def evaluate_tofu(
    model: nn.Module,
    tokenizer: Any,
    splits: dict[str, list[dict[str, Any]]],
    *,
    batch_size: int = 8,
    generation_batch_size: int | None = None,
    max_new_tokens: int = 200,
    generate: bool = True,
    mia_k: float = 0.4,
    retain_logs_path: str | os.PathLike | None = None,
    privleak_ref_auc: float | None = 0.5,
    pack_prefix: bool = True,
    reuse_teacher_forcing: bool = True,
    runner: ForwardRunner | None = None,
) -> dict[str, dict[str, Any]]:
    """TOFU evaluation in the reference framework's schema, from shared passes.

    Args:
        model: Causal LM (put in eval mode during the call, then restored).
        tokenizer: Needs ``decode``/``batch_decode``, ``pad_token_id``, ``eos_token_id``.
        splits: Samples per split: ``forget``, ``retain``, ``ra`` (``real_authors``), ``wf``
            (``world_facts``), ``holdout``. A sample is ``{"input_ids", "labels"}`` (-100 on
            the prompt) plus optional ``"prompt_ids"`` (generation prompt; default: the
            unlabelled head of ``input_ids``), ``"answer"`` (text; default: decoded labels),
            ``"paraphrased"`` ({"input_ids", "labels"}), ``"perturbed"`` (list of those) and
            ``"index"`` (key in ``value_by_index``; default: position).
        batch_size: Rows per teacher-forced call.
        generation_batch_size: Prompts per generate call (default ``batch_size``).
        max_new_tokens: Greedy generation budget (ROUGE).
        generate: Compute ROUGE (``False`` skips generation).
        mia_k: k of Min-K% and Min-K%++.
        retain_logs_path: The retain model's TOFU_EVAL.json (or its directory) for
            forget quality and PrivLeak; missing -> ``forget_quality`` is null, with a warning.
        privleak_ref_auc: PrivLeak's retrain AUC when the retain logs have none.
        pack_prefix: Share the question prefix between answer variants (exact).
        reuse_teacher_forcing: Take greedy tokens known from teacher forcing (exact).
        runner: A :class:`ForwardRunner` to reuse (its counter accumulates).

    Returns:
        ``{metric_key: {"agg_value": ..., "value_by_index": {"<index>": {"score": ...}}}}``.
    """
    data: dict[str, list[dict[str, Any]]] = {}
    for name, samples in splits.items():
        key = SPLIT_ALIASES.get(name)
        if key is None:
            raise DataError(f"unknown TOFU split '{name}'; known: {', '.join(SPLIT_ALIASES)}")
        if key in data:
            raise DataError(f"split '{name}' given twice (as '{key}')")
        data[key] = list(samples)
    pad = getattr(tokenizer, "pad_token_id", None)
    pad = pad if pad is not None else (_eos_ids(model, tokenizer) or [0])[0]
    runner = runner or ForwardRunner(
        model, batch_size=batch_size, generation_batch_size=generation_batch_size, pack_prefix=pack_prefix, pad_token_id=pad
    )

    groups, where = [], []  # where[g] = (split, sample position)
    for split, samples in data.items():
        for i, s in enumerate(samples):
            seqs = [s]
            if split in ("forget", "retain") and s.get("paraphrased") is not None:
                seqs.append(s["paraphrased"])
            if split != "holdout":
                seqs += list(s.get("perturbed") or [])
            groups.append(seqs)
            where.append((split, i))
    # Only what the metrics read: the argmax of the QA answer (memorisation, generation drafts)
    # and the Min-K%++ vocabulary statistics of the MIA splits' QA answers; logp of everything.
    drafting = generate and max_new_tokens > 0 and reuse_teacher_forcing
    needs: dict[tuple[int, int], set[str]] = {}
    for g, (split, _) in enumerate(where):
        want = {"pred"} if split == "forget" or (drafting and split != "holdout") else set()
        want |= {"vocab"} if split in ("forget", "holdout") else set()
        if want:
            needs[(g, 0)] = want
    was_training = model.training
    model.eval()
    try:
        records = runner.score(groups, needs=needs, desc="TOFU eval: teacher-forced pass")
        per_split: dict[str, list[list[TokenRecord]]] = {k: [] for k in data}
        for (split, _), recs in zip(where, records):
            per_split[split].append(recs)
        gens: dict[str, list[str]] = {}
        if generate and max_new_tokens > 0:
            prompts, drafts, owners = [], [], []
            for split in (k for k in data if k != "holdout"):
                for s, recs in zip(data[split], per_split[split]):
                    given = s.get("prompt_ids")
                    if given is None:
                        given = s["input_ids"][: _answer_start(list(s["labels"]))]
                    prompt = [int(t) for t in given]
                    prompts.append(prompt)
                    drafts.append(greedy_draft(s, prompt, recs[0]) if reuse_teacher_forcing else None)
                    owners.append(split)
            eos = _eos_ids(model, tokenizer)
            tokens = runner.generate(prompts, max_new_tokens=max_new_tokens, eos_token_ids=eos, drafts=drafts,
                                     desc="TOFU eval: greedy generation (ROUGE)")
            texts = [t.strip() for t in tokenizer.batch_decode(tokens, skip_special_tokens=True)] if tokens else []
            for split, text in zip(owners, texts):
                gens.setdefault(split, []).append(text)
    finally:
        model.train(was_training)

    values: dict[str, SplitValues] = {}
    for split, samples in data.items():
        recs = per_split[split]
        n_para = 1 if split in ("forget", "retain") and all(s.get("paraphrased") is not None for s in samples) else 0
        has_pert = split != "holdout" and bool(samples) and all(s.get("perturbed") for s in samples)
        values[split] = SplitValues(
            indices=[str(s.get("index", i)) for i, s in enumerate(samples)],
            qa=[r[0] for r in recs],
            answers=[_answer_text(tokenizer, s) for s in samples],
            para=[r[1] for r in recs] if n_para else None,
            pert=[r[1 + n_para :] for r in recs] if has_pert else None,
            generations=gens.get(split),
        )
    results: dict[str, dict[str, Any]] = {}
    for split in ("forget", "retain", "ra", "wf"):
        if split in values:
            results.update(split_results(split, values[split]))
    if "forget" in values:
        results.update(forget_privacy_results(values["forget"], values.get("holdout"), k=mia_k))
    results.update(retain_reference_results(results, load_retain_logs(retain_logs_path), privleak_ref_auc))
    return results
