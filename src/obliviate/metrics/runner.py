"""Shared-pass evaluation runner for causal LMs (DESIGN §6 last point, §7).

ONE teacher-forced forward pass per sequence yields everything the probability, truth-ratio,
MIA and memorisation metrics need, stored per sequence in a :class:`TokenRecord`: answer-token
log-probs, teacher-forced argmax (hence the "correct" flags) and the Min-K%++ terms ``mu``/
``sigma`` of the next-token distribution. Two further savings, both exact:

- **Shared-prefix packing**: the variants of one question (original, paraphrased, perturbed
  answers) share the question's tokens. They are packed into one row, the prefix once, then
  each answer with its own position ids and a 4-D attention mask letting an answer see the
  prefix and itself only. Results equal the unpacked pass (float noise, tested to 1e-5).
- **Teacher-forcing drafts for greedy generation**: greedy decoding follows the gold answer
  for as long as the teacher-forced argmax equals the label, and its token at the first
  mismatch is that argmax. Those tokens are known from the forward pass, so ``generate`` only
  continues from there (nothing to generate at all when the answer is reproduced up to EOS).

Inputs are tokenised sequences ``{"input_ids": [...], "labels": [...]}`` (``-100`` on prompt
tokens) and prompt-only ids for generation, so the runner does not depend on a data loader.
Padding never enters a loss: rows are right-padded for teacher forcing with the attention
mask built from lengths (never from ``pad_token_id``), left-padded for generation, and
results do not depend on the batch size.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from obliviate.errors import DataError
from obliviate.metrics.mia_llm import token_mu_sigma
from obliviate.metrics.tofu import save_tofu_results, tofu_summary  # re-exported
from obliviate.progress import progress

IGNORE_INDEX = -100
#: Answer-token rows post-processed at once (bounds the ``[n, vocab]`` float32 buffers).
_TOKEN_CHUNK = 2048


@dataclass
class EvalCounter:
    """Work done by a :class:`ForwardRunner` (the bench reports these)."""

    forward_calls: int = 0  # teacher-forced model calls (batches)
    forward_rows: int = 0  # rows in those calls (a packed row holds several sequences)
    forward_sequences: int = 0  # sequences scored
    forward_tokens: int = 0  # non-padding tokens fed to teacher-forced calls
    generate_calls: int = 0  # model.generate calls (batches)
    generated_prompts: int = 0  # prompts that needed model.generate
    generation_steps: int = 0  # decoding forward calls inside model.generate (new-token positions per call, summed)
    generated_tokens: int = 0  # new tokens kept from model.generate (up to EOS or the budget)
    draft_tokens: int = 0  # greedy tokens taken from teacher forcing instead of generated
    head_tokens: int = 0  # positions the LM head ran on in teacher-forced calls (only scored ones when it can)


@dataclass
class TokenRecord:
    """Per-sequence values from one teacher-forced pass; arrays are ``[n]`` answer tokens.

    Attributes:
        logp: ``log p(label_t | prefix)`` per answer token.
        pred: Teacher-forced argmax token ids (``None`` when not asked for, see
            :meth:`ForwardRunner.score`).
        labels: Answer token ids.
        mu: Mean of ``log p(v)`` under the next-token distribution (Min-K%++; ``None`` when
            not asked for).
        sigma: Its standard deviation (variance floored at 1e-6; ``None`` likewise).
    """

    logp: np.ndarray
    pred: np.ndarray | None
    labels: np.ndarray
    mu: np.ndarray | None = None
    sigma: np.ndarray | None = None

    @property
    def correct(self) -> np.ndarray:
        """``pred == labels`` per answer token ``[n]``."""
        if self.pred is None:
            raise ValueError("this record was scored without the teacher-forced argmax (needs={'pred'})")
        return self.pred == self.labels

    @property
    def logp_mean(self) -> float:
        """Length-normalised log-probability ``−NLL`` (NaN for an empty answer)."""
        return float(self.logp.mean()) if self.logp.size else float("nan")


@dataclass
class _Row:
    ids: list[int]
    pos: list[int]
    seg: list[int]  # 0 = shared prefix (or whole unpacked sequence), v+1 = answer of variant v
    packed: bool
    targets: list[tuple[tuple[int, int], list[int], list[int]]] = field(default_factory=list)  # (key, positions, labels)


def _validate(seq: dict[str, Any], where: str) -> tuple[list[int], list[int]]:
    ids, labels = list(seq["input_ids"]), list(seq["labels"])
    if len(ids) != len(labels):
        raise DataError(f"{where}: input_ids has {len(ids)} tokens but labels has {len(labels)}")
    if any(lab < 0 and lab != IGNORE_INDEX for lab in labels):
        raise DataError(f"{where}: labels must be token ids or {IGNORE_INDEX}")
    return [int(i) for i in ids], [int(lab) for lab in labels]


def _answer_start(labels: list[int]) -> int:
    return next((t for t, lab in enumerate(labels) if lab != IGNORE_INDEX), len(labels))


def _targets(ids_len: int, labels: list[int], to_row: Any) -> tuple[list[int], list[int]]:
    """Row positions predicting each answer token, and the labels (position 0 cannot be predicted)."""
    pos, lab = [], []
    for t in range(1, ids_len):
        if labels[t] != IGNORE_INDEX:
            pos.append(to_row(t - 1))
            lab.append(labels[t])
    return pos, lab


def supports_packing(model: nn.Module) -> bool:
    """Whether custom 4-D masks are safe: eager/SDPA attention, no sliding window."""
    cfg = getattr(model, "config", None)
    impl = getattr(cfg, "_attn_implementation", None)
    return impl in ("eager", "sdpa") and not getattr(cfg, "sliding_window", None)


class _HeadAt:
    """Context: the model's output embeddings (LM head) run only at ``(rows, positions)``.

    A forward pre-hook on ``model.get_output_embeddings()`` replaces the head's input, the
    last hidden states ``[b, T, h]``, by ``hidden[rows, positions]`` ``[n, h]``; whatever the
    model does to the head's output afterwards (logit scaling, soft-capping) is elementwise,
    so the returned logits are ``[n, v]``. ``applied`` says whether that happened (models
    without output embeddings, or whose head input has another shape, are left alone).
    """

    def __init__(self, model: nn.Module, rows: torch.Tensor, positions: torch.Tensor) -> None:
        self.rows, self.positions, self.applied, self.handle = rows, positions, False, None
        getter = getattr(model, "get_output_embeddings", None)
        self.head = getter() if callable(getter) else None

    def _pre(self, _module: nn.Module, args: tuple) -> tuple | None:
        hidden = args[0] if args else None
        if self.applied or not isinstance(hidden, torch.Tensor) or hidden.dim() != 3:
            return None
        self.applied = True
        return (hidden[self.rows, self.positions], *args[1:])  # [n, h]

    def __enter__(self) -> _HeadAt:
        if isinstance(self.head, nn.Module):
            self.handle = self.head.register_forward_pre_hook(self._pre)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.handle is not None:
            self.handle.remove()


class ForwardRunner:
    """Runs the shared teacher-forced passes and batched greedy generation, counting work.

    Args:
        model: A causal LM returning ``.logits`` ``[b, s, v]``.
        batch_size: Rows per teacher-forced call (a packed row holds all variants of one
            question; lower it for long rows on large vocabularies).
        generation_batch_size: Prompts per ``generate`` call (default: ``batch_size``).
        pack_prefix: Pack the variants of a question into one row (see module docstring);
            switched off automatically for attention implementations without 4-D masks.
        pad_token_id: Filler id for padded positions (never attended, never scored).
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        batch_size: int = 8,
        generation_batch_size: int | None = None,
        pack_prefix: bool = True,
        pad_token_id: int = 0,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model
        self.batch_size = int(batch_size)
        self.generation_batch_size = int(generation_batch_size or batch_size)
        self.pack_prefix = bool(pack_prefix) and supports_packing(model)
        self.pad_token_id = int(pad_token_id)
        self.counter = EvalCounter()

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # ------------------------------------------------------------------ teacher forcing
    def _rows(self, group: Sequence[tuple[list[int], list[int]]], g: int) -> list[_Row]:
        lengths = [len(ids) for ids, _ in group]
        prefix = 0
        if self.pack_prefix and len(group) > 1:
            cap = min(min(_answer_start(lab), len(ids)) for ids, lab in group)
            first = group[0][0]
            while prefix < cap and all(ids[prefix] == first[prefix] for ids, _ in group):
                prefix += 1
        if prefix < 1:  # nothing shared: one plain row per sequence
            rows = []
            for v, (ids, lab) in enumerate(group):
                pos, lbl = _targets(len(ids), lab, lambda q: q)
                rows.append(_Row(ids, list(range(len(ids))), [0] * len(ids), False, [((g, v), pos, lbl)]))
            return rows
        row = _Row(list(group[0][0][:prefix]), list(range(prefix)), [0] * prefix, True)
        for v, (ids, lab) in enumerate(group):
            offset = len(row.ids)
            row.ids += ids[prefix:]
            row.pos += list(range(prefix, lengths[v]))
            row.seg += [v + 1] * (lengths[v] - prefix)
            pos, lbl = _targets(len(ids), lab, lambda q, o=offset: q if q < prefix else o + q - prefix)
            row.targets.append(((g, v), pos, lbl))
        return [row]

    def _forward(self, rows: list[_Row], r_idx: list[int], p_idx: list[int]) -> torch.Tensor:
        """Logits ``[n, v]`` of right-padded ``rows`` at the (row, position) pairs ``(r_idx, p_idx)``.

        The LM head runs only at those positions when the model routes its last hidden states
        through ``get_output_embeddings()`` (every Hugging Face causal LM); otherwise the full
        ``[b, T, v]`` logits are computed and indexed.
        """
        b, t_max = len(rows), max(len(r.ids) for r in rows)
        ids = torch.full((b, t_max), self.pad_token_id, dtype=torch.long)
        lengths = torch.tensor([len(r.ids) for r in rows])
        for i, r in enumerate(rows):
            ids[i, : len(r.ids)] = torch.tensor(r.ids)
        kwargs: dict[str, Any] = {}
        if any(r.packed for r in rows):
            seg = torch.full((b, t_max), -1, dtype=torch.long)  # -1 = padding
            pos = torch.arange(t_max).repeat(b, 1)  # [b, T]
            for i, r in enumerate(rows):
                seg[i, : len(r.ids)] = torch.tensor(r.seg)
                pos[i, : len(r.ids)] = torch.tensor(r.pos)
            causal = torch.ones(t_max, t_max, dtype=torch.bool).tril()  # [T, T]
            q, k = seg.unsqueeze(2), seg.unsqueeze(1)  # [b, T, 1], [b, 1, T]
            allow = causal & ((k == 0) | (k == q))  # [b, T, T]; real tokens never see (later) pads
            dtype = next(self.model.parameters()).dtype
            mask = torch.zeros(b, 1, t_max, t_max, dtype=dtype)
            mask.masked_fill_(~allow.unsqueeze(1), torch.finfo(dtype).min)
            kwargs = {"attention_mask": mask.to(self.device), "position_ids": pos.to(self.device)}
        else:
            mask = (torch.arange(t_max).unsqueeze(0) < lengths.unsqueeze(1)).long()  # [b, T]
            kwargs = {"attention_mask": mask.to(self.device)}
        self.counter.forward_calls += 1
        self.counter.forward_rows += b
        self.counter.forward_tokens += int(lengths.sum())
        rows_t = torch.tensor(r_idx, dtype=torch.long, device=self.device)
        pos_t = torch.tensor(p_idx, dtype=torch.long, device=self.device)
        with _HeadAt(self.model, rows_t, pos_t) as head:
            logits = self.model(input_ids=ids.to(self.device), use_cache=False, **kwargs).logits
        if head.applied and logits.dim() == 2 and logits.shape[0] == len(p_idx):
            self.counter.head_tokens += len(p_idx)
            return logits  # [n, v]
        self.counter.head_tokens += b * t_max
        return logits[rows_t, pos_t]  # [b, T, v] -> [n, v]

    @torch.inference_mode()
    def score(self, groups: Sequence[Sequence[dict[str, Any]]], needs: dict[tuple[int, int], set[str]] | None = None,
              desc: str = "teacher-forced pass") -> list[list[TokenRecord]]:
        """Teacher-forced values of every sequence, one forward pass each.

        Args:
            groups: Groups of tokenised sequences; the sequences of a group (e.g. the answers
                to one question) may share a prompt prefix, which is then computed once.
            needs: What each sequence needs besides ``logp``: ``needs[(g, v)]`` holds
                ``"pred"`` (the teacher-forced argmax) and/or ``"vocab"`` (Min-K%++ ``mu`` /
                ``sigma``, a pass over the whole vocabulary per token); a sequence without a
                key gets ``logp`` only. ``None``: everything for every sequence.
            desc: Label of the progress bar.

        Returns:
            ``records[g][v]`` for sequence ``v`` of group ``g``.
        """
        rows: list[_Row] = []
        for g, group in enumerate(groups):
            checked = [_validate(s, f"group {g} sequence {v}") for v, s in enumerate(group)]
            if checked:
                rows += self._rows(checked, g)
        out: list[list[TokenRecord | None]] = [[None] * len(group) for group in groups]
        everything = {"pred", "vocab"}
        order = sorted(range(len(rows)), key=lambda i: -len(rows[i].ids))  # less padding
        with progress(total=sum(len(g) for g in groups), desc=desc, unit="seq") as bar:
            for start in range(0, len(order), self.batch_size):
                batch = [rows[i] for i in order[start : start + self.batch_size]]
                targets = [t for r in batch for t in r.targets]  # (key, positions, labels) per sequence
                r_idx = [i for i, r in enumerate(batch) for _, pos, _ in r.targets for _ in pos]
                p_idx = [p for _, pos, _ in targets for p in pos]
                labels = torch.tensor([x for _, _, lab in targets for x in lab], dtype=torch.long)
                wants = [everything if needs is None else needs.get(key, set()) for key, _, _ in targets]
                per_token = [w for w, (_, pos, _) in zip(wants, targets) for _ in pos]
                want_pred = torch.tensor([("pred" in w) for w in per_token], dtype=torch.bool)
                want_vocab = torch.tensor([("vocab" in w) for w in per_token], dtype=torch.bool)
                logits = self._forward(batch, r_idx, p_idx)  # [n, v]
                logp_parts, pred_parts, mu_parts, sigma_parts = [], [], [], []
                for c in range(0, len(p_idx), _TOKEN_CHUNK):
                    sel = logits[c : c + _TOKEN_CHUNK].float()  # [n, v]
                    lsm = torch.log_softmax(sel, dim=-1)
                    lab = labels[c : c + _TOKEN_CHUNK].to(lsm.device)
                    logp_parts.append(lsm.gather(-1, lab.unsqueeze(-1)).squeeze(-1).cpu())
                    wp = want_pred[c : c + _TOKEN_CHUNK].to(lsm.device)
                    wv = want_vocab[c : c + _TOKEN_CHUNK].to(lsm.device)
                    if bool(wp.any()):
                        pred_parts.append(sel[wp].argmax(-1).cpu())
                    if bool(wv.any()):
                        mu, sigma = token_mu_sigma(lsm[wv])
                        mu_parts.append(mu.cpu())
                        sigma_parts.append(sigma.cpu())
                logp = torch.cat(logp_parts).numpy() if logp_parts else np.zeros(0)
                pred = torch.cat(pred_parts).numpy() if pred_parts else np.zeros(0, dtype=np.int64)
                mu = torch.cat(mu_parts).numpy() if mu_parts else np.zeros(0)
                sigma = torch.cat(sigma_parts).numpy() if sigma_parts else np.zeros(0)
                at = at_pred = at_vocab = 0
                for ((g, v), pos, lab), want in zip(targets, wants):
                    n = len(pos)
                    rec = TokenRecord(logp=logp[at : at + n].astype(np.float64), pred=None,
                                      labels=np.asarray(lab, dtype=np.int64))
                    if "pred" in want:
                        rec.pred = pred[at_pred : at_pred + n].astype(np.int64)
                        at_pred += n
                    if "vocab" in want:
                        rec.mu = mu[at_vocab : at_vocab + n].astype(np.float64)
                        rec.sigma = sigma[at_vocab : at_vocab + n].astype(np.float64)
                        at_vocab += n
                    out[g][v] = rec
                    at += n
                    self.counter.forward_sequences += 1
                bar.update(len(targets))
        return out  # type: ignore[return-value]

    # ------------------------------------------------------------------ generation
    @torch.inference_mode()
    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        *,
        max_new_tokens: int,
        eos_token_ids: Sequence[int],
        pad_token_id: int | None = None,
        drafts: Sequence[Sequence[int] | None] | None = None,
        desc: str = "greedy generation",
    ) -> list[list[int]]:
        """Greedy generation, batched with left padding; returns only the new tokens.

        Args:
            prompts: Prompt token ids per sample (no padding).
            max_new_tokens: Generation budget per sample.
            eos_token_ids: Tokens that end a generation (cut, not returned).
            pad_token_id: Left-padding id (default: the runner's).
            drafts: Optional greedy tokens already known per sample (e.g. from
                :func:`greedy_draft`); generation continues after them.
            desc: Label of the progress bar (over the prompts that need ``model.generate``).

        Returns:
            New token ids per sample, cut at the first EOS and at ``max_new_tokens``.
        """
        from transformers import GenerationConfig

        eos = {int(e) for e in eos_token_ids}
        pad = self.pad_token_id if pad_token_id is None else int(pad_token_id)
        results: list[list[int] | None] = [None] * len(prompts)
        pending: list[tuple[int, list[int], list[int], int]] = []  # (i, context, draft, budget)
        for i, prompt in enumerate(prompts):
            draft = list((drafts[i] if drafts is not None else None) or [])[:max_new_tokens]
            stop = next((j for j, tok in enumerate(draft) if tok in eos), None)
            self.counter.draft_tokens += len(draft) if stop is None else stop + 1
            if stop is not None:
                results[i] = draft[:stop]
            elif len(draft) >= max_new_tokens:
                results[i] = draft
            else:
                pending.append((i, [int(t) for t in prompt] + draft, draft, max_new_tokens - len(draft)))
        pending.sort(key=lambda x: (-x[3], -len(x[1])))  # similar budgets and lengths together
        bar = progress(total=len(pending), desc=desc, unit="prompt")
        for start in range(0, len(pending), self.generation_batch_size):
            batch = pending[start : start + self.generation_batch_size]
            width = max(len(ctx) for _, ctx, _, _ in batch)
            ids = torch.full((len(batch), width), pad, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)  # from lengths, never from pad ids
            for r, (_, ctx, _, _) in enumerate(batch):
                ids[r, width - len(ctx) :] = torch.tensor(ctx)
                mask[r, width - len(ctx) :] = 1
            budget = max(b for *_, b in batch)
            config = GenerationConfig(
                max_new_tokens=budget, do_sample=False, num_beams=1, pad_token_id=pad, eos_token_id=sorted(eos) or None
            )
            self.counter.generate_calls += 1
            self.counter.generated_prompts += len(batch)
            out = self.model.generate(
                input_ids=ids.to(self.device), attention_mask=mask.to(self.device), generation_config=config
            )
            new = out[:, width:].tolist()  # [b, <= budget]
            self.counter.generation_steps += out.shape[1] - width
            for r, (i, _, draft, b) in enumerate(batch):
                cont = new[r][:b]
                stop = next((j for j, tok in enumerate(cont) if tok in eos), len(cont))
                results[i] = draft + cont[:stop]
                self.counter.generated_tokens += stop
            bar.update(len(batch))
        bar.close()
        return results  # type: ignore[return-value]


def greedy_draft(sample: dict[str, Any], prompt: Sequence[int], record: TokenRecord) -> list[int] | None:
    """Greedy tokens implied by teacher forcing, or ``None`` if the sample does not allow it.

    Valid when ``input_ids = prompt + answer`` with every answer token labelled: greedy
    decoding from ``prompt`` then emits the answer while the teacher-forced argmax equals the
    label, and at the first mismatch emits that argmax.

    Returns:
        ``pred[: j + 1]`` with ``j`` the first mismatch, or the whole answer if there is none.
    """
    ids, labels = list(sample["input_ids"]), list(sample["labels"])
    a = len(prompt)
    if a < 1 or list(prompt) != ids[:a] or a >= len(ids):
        return None
    if any(lab == IGNORE_INDEX for lab in labels[a:]) or any(lab != IGNORE_INDEX for lab in labels[:a]):
        return None
    if record.pred is None or labels[a:] != ids[a:] or record.pred.size != len(ids) - a:
        return None
    wrong = np.flatnonzero(~record.correct)
    stop = record.pred.size if wrong.size == 0 else int(wrong[0]) + 1
    return [int(t) for t in record.pred[:stop]]
