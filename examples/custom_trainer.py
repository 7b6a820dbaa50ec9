"""A custom unlearning method via the seed-001 route: subclass ``UnlearningTrainer``.

Run it: ``python examples/custom_trainer.py`` (a tiny random 2-layer Llama, CPU, seconds).
``docs/adding_a_method.md`` includes this file; ``tests/unit/methods/test_custom_trainer.py``
runs it.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass

import torch
from transformers import LlamaConfig, LlamaForCausalLM, TrainingArguments

from obliviate.data import ForgetRetainDataset, PairCollator
from obliviate.engine import UnlearningTrainer, build_trainer
from obliviate.methods import METHODS
from obliviate.models.adapters import CausalLMAdapter


@dataclass
class ClippedGradDiffConfig:
    """Arguments of ClippedGradDiff (the ``method_args`` of its YAML).

    Attributes:
        gamma: Weight of the forget (ascent) term.
        alpha: Weight of the retain NLL.
        max_forget_nll: A forget sequence stops being ascended once its NLL exceeds this.
    """

    gamma: float = 1.0
    alpha: float = 1.0
    max_forget_nll: float = 8.0


@METHODS.register("ClippedGradDiff", tracks=("llm",))
class ClippedGradDiff(UnlearningTrainer):
    """``−γ·mean min(NLL_f, max_forget_nll) + α·NLL_r``: gradient difference with a ceiling."""

    Config = ClippedGradDiffConfig  # method_args are parsed into self.cfg
    needs_reference = False  # True would build a frozen copy in self.ref_model

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        adapter = self.ctx.adapter  # per-sample losses over answer tokens only
        f_nll, f_logits = adapter.per_sample_nll(model, inputs["forget"])  # [b]
        r_nll, _ = adapter.per_sample_nll(model, inputs["retain"])  # [b]
        forget_loss = f_nll.clamp(max=self.cfg.max_forget_nll).mean()
        loss = -self.cfg.gamma * forget_loss + self.cfg.alpha * r_nll.mean()
        return (loss, f_logits) if return_outputs else loss


def toy_qa(n: int, seed: int, prompt_len: int = 4, answer_len: int = 4, vocab: int = 64) -> list[dict[str, torch.Tensor]]:
    """``n`` random question/answer sequences; labels are ``-100`` on the question tokens."""
    g = torch.Generator().manual_seed(seed)
    items = []
    for _ in range(n):
        ids = torch.randint(1, vocab, (prompt_len + answer_len,), generator=g)
        labels = ids.clone()
        labels[:prompt_len] = -100
        items.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels})
    return items


@torch.no_grad()
def mean_nll(model: torch.nn.Module, items: list[dict[str, torch.Tensor]]) -> float:
    """Mean answer-token NLL of ``items``."""
    batch = {k: torch.stack([it[k] for it in items]) for k in items[0]}
    return CausalLMAdapter().per_sample_nll(model, batch)[0].mean().item()


def main(steps: int = 6, method_args: dict | None = None) -> tuple[float, float]:
    """Unlearn a toy forget set with ClippedGradDiff; return forget NLL (before, after)."""
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                         num_key_value_heads=2, intermediate_size=64))
    forget, retain = toy_qa(4, seed=1), toy_qa(8, seed=2)
    before = mean_nll(model, forget)

    trainer_cls, method = build_trainer("ClippedGradDiff", method_args)  # method is None: a trainer subclass
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(output_dir=out, per_device_train_batch_size=2, learning_rate=1e-2, max_steps=steps,
                                 report_to="none", save_strategy="no", logging_strategy="no", disable_tqdm=True,
                                 dataloader_pin_memory=False)
        trainer = trainer_cls(
            model, args, method=method, adapter=CausalLMAdapter(), method_args=method_args,
            train_dataset=ForgetRetainDataset(forget, retain, anchor=trainer_cls.anchor, seed=0),
            data_collator=PairCollator(),
        )
        trainer.train()
    after = mean_nll(model, forget)
    print(f"forget NLL: {before:.3f} -> {after:.3f}")
    return before, after


if __name__ == "__main__":
    main()
