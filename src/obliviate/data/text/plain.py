"""Plain text as language-modelling blocks (every token trained), e.g. for LoRAPrune's
recovery fine-tuning or a held-out perplexity.

The file is read as UTF-8, tokenised once without special tokens, and cut into consecutive
non-overlapping blocks of ``block_size`` tokens (the last, shorter block is kept if it has
at least 2 tokens). Items look like QA items (``input_ids``, ``labels`` = ``input_ids``,
``index``), so :class:`~obliviate.data.text.qa.DataCollatorForSupervisedDataset` pads them.

Use it anywhere a dataset config is accepted, e.g.
``data.full='{handler: TextFileDataset, args: {path: corpus.txt, block_size: 256}}'``, or
with ``obliviate prune pruning=loraprune pruning.text_file=corpus.txt``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from obliviate.registry import DATASETS
from obliviate.errors import ConfigError, DataError


@DATASETS.register("TextFileDataset", track="llm")
class TextFileDataset(Dataset):
    """Consecutive token blocks of a plain-text file.

    Args:
        path: A UTF-8 text file.
        tokenizer: The model's tokenizer.
        block_size: Tokens per block (>= 2).
        max_blocks: Keep only the first this many blocks (None: all).
        name: Display name (errors, logs).
    """

    def __init__(self, path: str | Path | None = None, tokenizer: Any = None, block_size: int = 256, max_blocks: int | None = None,
                 name: str = "text", **_: Any) -> None:
        if tokenizer is None:
            raise ConfigError(f"dataset {name} needs a tokenizer")
        if path is None:
            raise ConfigError(f"dataset {name}: TextFileDataset needs args.path (a UTF-8 text file)")
        if int(block_size) < 2:
            raise ConfigError(f"dataset {name}: block_size must be >= 2, got {block_size}")
        file = Path(path).expanduser()
        if not file.is_file():
            raise DataError(f"text file '{file}' does not exist; pass an existing UTF-8 .txt file")
        try:
            text = file.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise DataError(f"text file '{file}' is not UTF-8 ({exc.reason} at byte {exc.start}); convert it to UTF-8") from None
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        bs = int(block_size)
        blocks = [ids[i:i + bs] for i in range(0, len(ids), bs)]
        blocks = [b for b in blocks if len(b) >= 2]
        if max_blocks is not None:
            blocks = blocks[: int(max_blocks)]
        if not blocks:
            raise DataError(f"text file '{file}' has fewer than 2 tokens; it cannot train or score a language model")
        self.blocks = [torch.tensor(b, dtype=torch.long) for b in blocks]
        self.tokenizer, self.name, self.path, self.block_size = tokenizer, name, str(file), bs
        self._hash = hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, i: int) -> dict[str, Any]:
        ids = self.blocks[i]
        return {"input_ids": ids, "labels": ids.clone(), "index": i}

    def n_tokens(self) -> int:
        """Number of tokens over all blocks."""
        return sum(len(b) for b in self.blocks)

    def content_hash(self) -> str:
        """Hash of the file's text (recorded in run metrics)."""
        return self._hash


__all__ = ["TextFileDataset"]
