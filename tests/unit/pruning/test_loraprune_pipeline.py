"""`obliviate prune pruning=loraprune` in-process on tiny-llama: plain-text training data, the
reference schedule (linear lr decay, 10% warm-up / cool-down), global ranking with per-layer
widths saved zero-padded and reloaded (stock from_pretrained and obliviate's loader)."""

from __future__ import annotations

import pytest
import torch
from hydra import compose, initialize_config_module

transformers = pytest.importorskip("transformers")
pytest.importorskip("peft")

LLM = ["experiment=llm/tofu_synthetic", "synthetic.n_authors=6", "synthetic.qa_per_author=2", "eval_batch_size=8"]


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _cfg(overrides):
    with initialize_config_module("obliviate.configs", version_base="1.3"):
        return compose(config_name="prune", overrides=overrides)


def test_loraprune_on_a_text_file_global_mode_saves_padded_and_reloads(tmp_path):
    from obliviate.models.llm import hf_causal_lm
    from obliviate.pipelines.prune_llm import run_prune_llm
    from obliviate.pruning.physical_llm import CONFIG_KEY, layer_widths

    text = tmp_path / "corpus.txt"
    text.write_text("Alice met Bob at the old mill by the river every morning before work. " * 60, encoding="utf-8")
    from obliviate.models.llm import build_tiny_tokenizer

    ours_tok = build_tiny_tokenizer()
    out = tmp_path / "lp"
    m = run_prune_llm(_cfg([*LLM, "pruning=loraprune", f"pruning.text_file={text}", "pruning.block_size=32", "pruning.steps=20",
                            "pruning.prune_freq=3", "pruning.mode=global", "pruning.lr=1e-2", "pruning.batch_size=4",
                            "pruning.latency_repeats=1", "pruning.eval_batches=2", "pruning.disable_tqdm=true",
                            f"paths.output_dir={out}", f"paths.cache_dir={tmp_path / 'cache'}"]), out)
    p = m["pruning"]
    assert p["warmup_steps"] == 2 and p["cooldown_steps"] == 2  # 10% of 20 steps each (reference fractions)
    lrs = [h["lr"] for h in p["history"]]
    assert lrs == sorted(lrs, reverse=True) and lrs[-1] < 0.2e-2  # linear decay to 0
    assert p["history"][-1]["sparsity"] == pytest.approx(p["group_sparsity"]) and p["n_pruned"] > 0
    ids = ours_tok(text.read_text(encoding="utf-8"), add_special_tokens=False)["input_ids"]
    assert m["n_train"] == -(-len(ids) // 32)  # every block of the file is training data
    # the LoRA fine-tuning learns the text by more than pruning half of the groups costs (random-init model)
    assert m["pruned"]["train_nll"] < m["original"]["train_nll"] - 0.2
    assert p["padded"] and not p["uniform"] and m["params_after"] < m["params_before"]
    stock = transformers.AutoModelForCausalLM.from_pretrained(m["model_dir"])
    kept = getattr(stock.config, CONFIG_KEY)["kept"]
    assert kept == {k: v for k, v in p["kept_per_layer"].items()}
    assert sum(q.numel() for q in stock.parameters()) == p["saved_params"] >= m["params_after"]
    ours, _ = hf_causal_lm({"model_args": {"pretrained_model_name_or_path": m["model_dir"]}})
    assert sum(q.numel() for q in ours.parameters()) == m["params_after"] and layer_widths(ours) == kept
    x = torch.randint(3, 200, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(ours.eval()(x).logits, stock.eval()(x).logits, atol=1e-5, rtol=0)


def test_text_file_errors_are_one_line(tmp_path):
    from obliviate.errors import DataError
    from obliviate.pipelines.prune_llm import run_prune_llm

    out = tmp_path / "bad"
    with pytest.raises(DataError, match="does not exist"):
        run_prune_llm(_cfg([*LLM, "pruning=loraprune", f"pruning.text_file={tmp_path / 'nope.txt'}", f"paths.output_dir={out}",
                            f"paths.cache_dir={tmp_path / 'cache'}"]), out)
    assert not (out / "metrics.json").exists()
