"""Tiny in-process causal LM, byte tokenizer and TOFU-like tokenised samples for metric tests."""

from __future__ import annotations

import random
from typing import Any

import pytest
import torch

PAD, BOS, EOS, OFFSET = 0, 1, 2, 3
VOCAB = OFFSET + 95  # printable ASCII


class ByteTokenizer:
    """Printable-ASCII tokenizer: exact round trip, no downloads."""

    pad_token_id, bos_token_id, eos_token_id = PAD, BOS, EOS

    def encode(self, text: str) -> list[int]:
        return [OFFSET + ord(c) - 32 for c in text if 32 <= ord(c) < 127]

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return "".join(chr(i - OFFSET + 32) if i >= OFFSET else ("" if skip_special_tokens else f"<{i}>") for i in ids)

    def batch_decode(self, batch: list[list[int]], skip_special_tokens: bool = True) -> list[str]:
        return [self.decode(list(ids), skip_special_tokens) for ids in batch]


def tiny_llama(seed: int = 0, layers: int = 2) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=layers, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=1024, bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD,
    )
    return LlamaForCausalLM(cfg).eval()


def encode_qa(tok: ByteTokenizer, question: str, answer: str) -> dict[str, Any]:
    prompt = [BOS] + tok.encode(f"Q: {question}\nA:")
    ans = tok.encode(" " + answer) + [EOS]
    return {"input_ids": prompt + ans, "labels": [-100] * len(prompt) + ans, "prompt_ids": prompt}


def _words(rng: random.Random, n: int) -> str:
    return " ".join("".join(rng.choice("abcdefghij") for _ in range(rng.randint(2, 6))) for _ in range(n))


def make_split(tok: ByteTokenizer, n: int, seed: int, n_pert: int = 3, para: bool = True, start: int = 0) -> list[dict[str, Any]]:
    """TOFU-like samples: question, answer, paraphrased answer, perturbed answers (tokenised)."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        q, a = _words(rng, rng.randint(2, 5)), _words(rng, rng.randint(2, 6))
        s = encode_qa(tok, q, a) | {"answer": a, "index": start + i}
        if para:
            s["paraphrased"] = encode_qa(tok, q, _words(rng, rng.randint(2, 6)))
        if n_pert:
            s["perturbed"] = [encode_qa(tok, q, _words(rng, rng.randint(2, 6))) for _ in range(n_pert)]
        out.append(s)
    return out


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread: tiny models are far slower with thread contention on a shared machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tok() -> ByteTokenizer:
    return ByteTokenizer()


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return tiny_llama()


@pytest.fixture(scope="module")
def splits(tok: ByteTokenizer) -> dict[str, list[dict[str, Any]]]:
    return {
        "forget": make_split(tok, 6, 1),
        "retain": make_split(tok, 5, 2),
        "real_authors": make_split(tok, 4, 3, para=False),
        "world_facts": make_split(tok, 4, 4, para=False),
        "holdout": make_split(tok, 6, 5, n_pert=0, para=False),
    }
