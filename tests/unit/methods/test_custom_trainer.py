"""The seed-001 route: a registered UnlearningTrainer subclass, resolved by build_trainer; the
documented example (docs/adding_a_method.md, examples/custom_trainer.py) runs as written."""

from __future__ import annotations

import re
import runpy
from pathlib import Path

import pytest
import torch
from transformers import TrainingArguments

from obliviate.data import ForgetRetainDataset, PairCollator
from obliviate.engine import UnlearningTrainer, build_trainer
from obliviate.errors import ConfigError, UnknownNameError
from obliviate.methods import METHODS, build_method
from obliviate.methods._common import pad_collate
from obliviate.models.adapters import CausalLMAdapter

from .conftest import forget_items, make_ctx, pair_batch, retain_items, tiny_llama

REPO = Path(__file__).resolve().parents[3]
DOC = REPO / "docs" / "adding_a_method.md"
EXAMPLE = REPO / "examples" / "custom_trainer.py"


@pytest.fixture
def scratch_registry(monkeypatch):
    """Entries registered during the test are dropped afterwards (other tests see the shipped set)."""
    for attr in ("_items", "_meta", "_aliases"):
        monkeypatch.setattr(METHODS, attr, dict(getattr(METHODS, attr)))
    return METHODS


def _python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, re.S)


def test_doc_shows_the_example_verbatim():
    blocks = _python_blocks(DOC.read_text())
    example = EXAMPLE.read_text()
    trainer_blocks = [b for b in blocks if "class ClippedGradDiff(UnlearningTrainer)" in b]
    assert len(trainer_blocks) == 1 and trainer_blocks[0] in example


def test_example_runs_and_forgets(scratch_registry):
    ns = runpy.run_path(str(EXAMPLE), run_name="custom_trainer_example")
    assert METHODS.get("ClippedGradDiff") is ns["ClippedGradDiff"]
    trainer_cls, method = build_trainer("ClippedGradDiff", {"gamma": 2.0})
    assert trainer_cls is ns["ClippedGradDiff"] and method is None
    before, after = ns["main"](steps=6)
    assert after > before + 0.3
    with pytest.raises(ConfigError, match="Did you mean: gamma"):
        build_trainer("ClippedGradDiff", {"gama": 1.0})


def test_doc_loss_object_example_runs(scratch_registry):
    ns: dict = {}
    exec(compile(_python_blocks(DOC.read_text())[0], str(DOC), "exec"), ns)
    model = tiny_llama(0)
    method = build_method("MySimNPO", {"beta": 2.0})
    loss, logs = method.loss(model, pair_batch(), make_ctx(method, model))
    assert torch.isfinite(loss) and "forget_loss" in logs


def test_build_trainer_errors():
    with pytest.raises(UnknownNameError, match="Did you mean"):
        build_trainer("NPOO")
    with pytest.raises(ConfigError, match="beta"):
        build_trainer("NPO", {"bta": 0.1})


def test_trainer_subclass_gets_cfg_reference_and_flags(scratch_registry, tmp_path):
    from dataclasses import dataclass

    @dataclass
    class Cfg:
        """Args.

        Attributes:
            scale: Loss scale.
        """

        scale: float = 1.0

    @METHODS.register("RefAscent", tracks=("llm",))
    class RefAscent(UnlearningTrainer):
        Config = Cfg
        needs_reference = True

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            kl = self.ctx.adapter.per_sample_kl(model, self.ref_model, inputs["forget"]).mean()
            nll = self.ctx.adapter.per_sample_nll(model, inputs["forget"])[0].mean()
            loss = self.cfg.scale * (-nll + kl)
            return (loss, None) if return_outputs else loss

    trainer_cls, method = build_trainer("RefAscent", {"scale": 0.5})
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=2, max_steps=2, report_to="none",
                             save_strategy="no", logging_strategy="no", disable_tqdm=True, use_cpu=True)
    trainer = trainer_cls(tiny_llama(0), args, method=method, adapter=CausalLMAdapter(), method_args={"scale": 0.5},
                          train_dataset=ForgetRetainDataset(forget_items(), retain_items()), data_collator=PairCollator(pad_collate))
    assert trainer.cfg.scale == 0.5 and trainer.ref_model is not None
    trainer.train()
    with pytest.raises(ConfigError):
        UnlearningTrainer(tiny_llama(0), args, method=build_method("GA"), adapter=CausalLMAdapter(), method_args={"x": 1})
