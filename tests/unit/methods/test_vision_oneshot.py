"""One-shot vision methods against independent computations: FF noise vs the Fisher, IU's
WoodFisher IHVP vs a dense solve, SSD dampening on a hand-built case, and the warnings that
keep a no-op from passing as success."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from obliviate.errors import ConfigError
from obliviate.methods import build_method
from obliviate.methods.ff import diag_fisher, fisher_noise_std, per_sample_grads
from obliviate.methods.iu import woodfisher_ihvp
from obliviate.methods.ssd import dampen

from .vision_helpers import ADAPTER, digits, split, trained_cnn

D_IN, C = 4, 3


def toy(n: int, seed: int, shift: float = 0.0) -> list[dict[str, torch.Tensor]]:
    """A float64 linear-classification toy set (a list works as a map-style dataset)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, D_IN, generator=g, dtype=torch.float64) + shift
    y = torch.randint(0, C, (n,), generator=g)
    return [{"pixel_values": x[i], "labels": y[i], "index": torch.tensor(i)} for i in range(n)]


def toy_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(D_IN, 5), nn.Tanh(), nn.Linear(5, C)).double()


def loop_grads(model: nn.Module, data: list[dict]) -> torch.Tensor:
    """Per-sample CE gradients ``[n, d]`` by one backward pass per sample."""
    rows = []
    for item in data:
        loss = nn.functional.cross_entropy(model(item["pixel_values"][None]), item["labels"][None])
        rows.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, list(model.parameters()))]))
    return torch.stack(rows)


def flat(tensors) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


# ----------------------------------------------------------------------------- per-sample grads / FF
def test_per_sample_grads_match_a_loop():
    model, data = toy_model(), toy(6, 1)
    batch = {k: torch.stack([it[k] for it in data]) for k in data[0]}
    grads = per_sample_grads(model, ADAPTER, batch)
    got = torch.cat([g.reshape(6, -1) for g in grads.values()], 1)
    assert torch.allclose(got, loop_grads(model, data), atol=1e-12)


def test_ff_noise_scale_follows_the_inverse_fisher():
    model, retain = toy_model(), toy(40, 2)
    fisher = diag_fisher(model, ADAPTER, retain, batch_size=16)
    expected_f = loop_grads(model, retain).pow(2).mean(0)
    assert torch.allclose(flat(fisher.values()), expected_f, rtol=1e-10, atol=1e-15)
    alpha, max_std = 1e-4, 0.05
    method = build_method("FF", {"alpha": alpha, "max_std": max_std, "eps": 0.0, "batch_size": 16})
    before = [p.detach().clone() for p in model.parameters()]
    method.apply(model, toy(5, 3), retain, ADAPTER, seed=11)
    delta = flat(p.detach() - b for p, b in zip(model.parameters(), before))
    # the same standard normals, drawn in the same order, scaled by min(sqrt(alpha / F), max_std)
    gen = torch.Generator().manual_seed(11)
    z = flat(torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in before)
    std = torch.sqrt(alpha / expected_f).clamp(max=max_std)
    assert torch.allclose(delta, std * z, rtol=1e-9, atol=1e-15)
    assert (std < max_std).any() and (std == max_std).any(), "the toy covers both regimes"
    assert method.stats["clamped_fraction"] == pytest.approx(float((std >= max_std).double().mean()))
    assert fisher_noise_std(torch.tensor([0.0, 4.0]), 1.0, 10.0, 0.0).tolist() == [10.0, 0.5]


def test_ff_resets_a_classifier_row_only_when_the_whole_class_is_forgotten():
    from obliviate.methods.ff import classifier_head, fully_forgotten_classes
    from obliviate.models.adapters import ClassifierAdapter

    adapter = ClassifierAdapter(C)
    retain_all = toy(40, 2)
    retain_no1 = [it for it in retain_all if int(it["labels"]) != 1]
    forget = [dict(it, labels=torch.tensor(1)) for it in toy(5, 3)]  # every forget sample is class 1
    assert fully_forgotten_classes(forget, retain_no1) == [1] and fully_forgotten_classes(forget, retain_all) == []
    probe = toy_model()
    assert classifier_head(probe, C) is probe[2] and classifier_head(probe, C + 7) is None
    kw = {"alpha": 1e-4, "max_std": 0.05, "eps": 0.0, "batch_size": 16}
    others = [r for r in range(C) if r != 1]

    # full-class forgetting (no class-1 sample left in the retain set): row 1 is resampled around 0
    model = toy_model()
    before = copy.deepcopy(model)
    method = build_method("FF", kw)
    method.apply(model, forget, retain_no1, adapter, seed=11)
    head = model[2]
    assert method.stats["forget_class_reset"] == [1]
    assert float(head.bias[1]) == 0.0 and float(head.weight[1].abs().max()) < 0.05  # N(0, 0.01^2) row
    assert float((head.weight[1] - before[2].weight[1]).abs().max()) > 0.05  # the old row is gone
    assert float((head.weight[others] - before[2].weight[others]).abs().max()) <= 0.05 * 6  # noise only (< 6 sigma)
    off = toy_model()
    build_method("FF", {**kw, "forget_class_reset": False}).apply(off, forget, retain_no1, adapter, seed=11)
    assert torch.equal(off[2].weight[others], head.weight[others])  # the same noise, without the reset

    # class 1 still has retain samples (sub-class / random forgetting): only the Fisher noise, bit for bit
    partial, noise_only = toy_model(), toy_model()
    method = build_method("FF", kw)
    method.apply(partial, forget, retain_all, adapter, seed=11)
    build_method("FF", {**kw, "forget_class_reset": False}).apply(noise_only, forget, retain_all, adapter, seed=11)
    assert method.stats["forget_class_reset"] == []
    assert all(torch.equal(a, b) for a, b in zip(partial.parameters(), noise_only.parameters()))


def test_ff_keeps_the_retained_samples_of_a_partly_forgotten_class():
    """Forgetting three images of class 0 must not wipe the class (the issue-13 bug: the row
    was reset whenever all forget samples shared a label)."""
    data = digits()
    labels = data.train.labels.numpy()
    forget_idx = np.flatnonzero(labels == 0)[:3]
    retain_idx = np.setdiff1d(np.arange(len(labels)), forget_idx)
    model = trained_cnn()
    method = build_method("FF", {"alpha": 1e-12, "max_std": 1e-6})  # next to no noise: only a reset could hurt
    method.apply(model, data.train.subset(forget_idx), data.train.subset(retain_idx), ADAPTER, 0)
    assert method.stats["forget_class_reset"] == []
    zeros = data.train.subset(np.setdiff1d(np.flatnonzero(labels == 0), forget_idx))
    with torch.no_grad():
        x = torch.stack([zeros[i]["pixel_values"] for i in range(len(zeros))])
        assert (model(x).argmax(-1) == 0).float().mean() == 1.0


# ----------------------------------------------------------------------------- IU
@pytest.mark.parametrize("block_rows", [None, 1, 2, 4, 9, 50])
def test_woodfisher_ihvp_equals_the_dense_solve_for_any_block_size(block_rows):
    g = torch.Generator().manual_seed(0)
    grads, v = torch.randn(9, 6, generator=g, dtype=torch.float64), torch.randn(6, generator=g, dtype=torch.float64)
    dense = torch.linalg.solve(0.1 * torch.eye(6, dtype=torch.float64) + grads.T @ grads / 9, v)
    calls = []

    def grad_block(i0, i1):
        calls.append((i0, i1))
        return grads[i0:i1]

    got = woodfisher_ihvp(grad_block, v, 9, 0.1, block_rows)
    assert torch.allclose(got, dense, rtol=1e-9, atol=1e-12)
    blocks = -(-9 // min(block_rows or 9, 9))
    # one block: computed once; m blocks: m (diagonal) + m(m-1)/2 (cross terms) + m (the final G^T w pass)
    assert len(calls) == (1 if blocks == 1 else 2 * blocks + blocks * (blocks - 1) // 2)


def _woodfisher_sherman_morrison(grads: torch.Tensor, v: torch.Tensor, damping: float) -> torch.Tensor:
    """The WoodFisher recursion (Singh & Alistarh 2020), written out as an independent oracle."""
    n, d = grads.shape
    inv = torch.eye(d, dtype=grads.dtype) / damping
    for g in grads:
        u = inv @ g
        inv = inv - torch.outer(u, u) / (n + g @ u)
    return inv @ v


def test_woodbury_equals_the_sherman_morrison_recursion():
    g = torch.Generator().manual_seed(1)
    grads, v = torch.randn(7, 5, generator=g, dtype=torch.float64), torch.randn(5, generator=g, dtype=torch.float64)
    got = woodfisher_ihvp(lambda i0, i1: grads[i0:i1], v, 7, 0.05, 3)
    assert torch.allclose(got, _woodfisher_sherman_morrison(grads, v, 0.05), rtol=1e-9, atol=1e-12)


def test_iu_update_is_the_dense_influence_step_on_a_tiny_model():
    model, forget, retain = toy_model(), toy(5, 3, shift=1.0), toy(12, 4)
    damping, alpha = 0.05, 0.7
    method = build_method("IU", {"damping": damping, "alpha": alpha, "batch_size": 5, "num_samples": 100})
    g_f, g_r = loop_grads(model, forget), loop_grads(model, retain)
    n_f, n_r = len(forget), len(retain)
    v = n_f / (n_f + n_r) * (g_f.mean(0) - g_r.mean(0))
    fisher = g_r.T @ g_r / n_r
    dense = torch.linalg.solve(damping * torch.eye(len(v), dtype=torch.float64) + fisher, v)
    assert torch.allclose(method.direction(model, forget, retain, ADAPTER, 0), dense, rtol=1e-8, atol=1e-12)
    before = flat(p.detach().clone() for p in model.parameters())
    method.apply(model, forget, retain, ADAPTER, 0)
    after = flat(p.detach() for p in model.parameters())
    assert torch.allclose(after - before, alpha * dense, rtol=1e-8, atol=1e-12)
    assert method.stats["relative"] == pytest.approx(float((alpha * dense).norm() / before.norm()), rel=1e-6)


def test_iu_rank_does_not_depend_on_the_memory_budget():
    """A budget below one gradient block only costs recomputation, never rank (issue 13: a
    1 GB budget left a ResNet-18 with a rank-24 WoodFisher)."""
    forget, retain = toy(5, 3, shift=1.0), toy(12, 4)
    roomy = build_method("IU", {"damping": 0.05, "batch_size": 5, "num_samples": 100})
    tight = build_method("IU", {"damping": 0.05, "batch_size": 5, "num_samples": 100, "max_memory_mb": 1e-4})  # ~1 gradient row
    a, b = roomy.direction(toy_model(), forget, retain, ADAPTER, 0), tight.direction(toy_model(), forget, retain, ADAPTER, 0)
    assert roomy.stats["rank"] == tight.stats["rank"] == 12
    assert tight.stats["gradient_passes"] > roomy.stats["gradient_passes"] == 1
    assert torch.allclose(a, b, rtol=1e-8, atol=1e-12)


def test_iu_default_moves_the_weights_and_negligible_updates_are_reported():
    sp = split({"forget_fraction": 0.1})
    model = trained_cnn()
    method = build_method("IU")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the default step must not be flagged as negligible
        method.apply(model, sp.forget, sp.retain, ADAPTER, 0)
    # far from the pitfall (weights moved by < 1e-6): above min_relative_change, max |Δθ| > 1e-4
    assert method.stats["relative"] > method.cfg.min_relative_change and method.stats["max_abs"] > 1e-4
    assert method.stats["rank"] == len(sp.retain) and not method.warnings
    tiny = {"alpha": 1e-9, "num_samples": 8}
    quiet = build_method("IU", tiny)
    with pytest.warns(RuntimeWarning, match="negligible"):
        quiet.apply(trained_cnn(), sp.forget, sp.retain, ADAPTER, 0)
    assert len(quiet.warnings) == 1 and "negligible" in quiet.warnings[0]  # what metrics.json["warnings"] gets
    with pytest.raises(ConfigError, match="negligible"):
        build_method("IU", {**tiny, "on_negligible": "raise"}).apply(trained_cnn(), sp.forget, sp.retain, ADAPTER, 0)


# ----------------------------------------------------------------------------- SSD
def test_ssd_dampening_on_a_hand_built_case():
    params = {"w": torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])}
    imp_f = {"w": torch.tensor([1.0, 10.0, 100.0, 0.0, 8.0])}
    imp_r = {"w": torch.tensor([1.0, 1.0, 1.0, 1.0, 1.0])}
    counts = dampen(params, imp_f, imp_r, alpha=5.0, lam=2.0)
    # selected: f > 5 r -> entries 1, 2, 4; factors min(2 r / f, 1) = 0.2, 0.02, 0.25
    assert params["w"].tolist() == pytest.approx([1.0, 0.4, 0.06, 4.0, 1.25])
    assert counts == {"selected": 3, "dampened": 3, "total": 5}
    capped = {"w": torch.tensor([1.0, 2.0])}
    dampen(capped, {"w": torch.tensor([3.0, 30.0])}, {"w": torch.tensor([1.0, 1.0])}, alpha=2.0, lam=10.0)
    assert capped["w"].tolist() == pytest.approx([1.0, 2.0 * 10 / 30])  # 10/3 > 1 is capped at 1


def _reference_importance(model: nn.Module, data: list[dict], batch_size: int) -> list[torch.Tensor]:
    """Port of the reference ``ParameterPerturber.calc_importance`` (if-loops/selective-synaptic-
    dampening ``ssd.py``): squared gradient of each batch's mean CE over an unshuffled loader,
    summed, divided by the number of batches."""
    imps = [torch.zeros_like(p) for p in model.parameters()]
    loader = torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=False)
    for batch in loader:
        model.zero_grad()
        nn.functional.cross_entropy(model(batch["pixel_values"]), batch["labels"]).backward()
        for imp, p in zip(imps, model.parameters()):
            imp += p.grad.detach().clone().pow(2)
    return [imp / len(loader) for imp in imps]


def test_ssd_batch_importance_is_the_references_on_class_sorted_batches():
    model, forget, retain = toy_model(), toy(7, 3, shift=1.0), toy(30, 4)
    by_class = lambda data: sorted(data, key=lambda it: int(it["labels"]))  # noqa: E731  (stable, as the reference's class-by-class sets)
    method = build_method("SSD", {"batch_size": 4, "reference": "retain"})
    imp_f, imp_r = method.importances(model, forget, retain, ADAPTER, 0)
    assert torch.allclose(flat(imp_f.values()), flat(_reference_importance(model, by_class(forget), 4)), rtol=1e-10)
    assert torch.allclose(flat(imp_r.values()), flat(_reference_importance(model, by_class(retain), 4)), rtol=1e-10)
    # reference="full": one unshuffled pass over retain then forget (the reference's ConcatDataset)
    full = build_method("SSD", {"batch_size": 4, "reference": "full", "alpha": 2.0})
    _, imp_d = full.importances(model, forget, retain, ADAPTER, 0)
    assert torch.allclose(flat(imp_d.values()), flat(_reference_importance(model, by_class(retain) + by_class(forget), 4)), rtol=1e-10)
    # a shuffled order gives another estimate (the batch estimator depends on the order)
    mixed = build_method("SSD", {"batch_size": 4, "reference": "retain", "batch_order": "random"})
    assert not torch.allclose(flat(mixed.importances(model, forget, retain, ADAPTER, 0)[1].values()), flat(imp_r.values()))


def test_ssd_forgets_a_class_and_counts_what_it_dampened():
    sp, model = split({"forget_class": 0}), trained_cnn()
    # the reference's estimator (class-sorted batches over retain then forget) at an alpha it can meet (< N/n_f = 10)
    method = build_method("SSD", {"reference": "full", "alpha": 5.0})
    method.apply(model, sp.forget, sp.retain, ADAPTER, 0)
    assert method.stats["dampened"] > 0 and method.stats["selected"] >= method.stats["dampened"]
    with torch.no_grad():
        x = torch.stack([sp.forget[i]["pixel_values"] for i in range(len(sp.forget))])
        acc_before = (trained_cnn()(x).argmax(-1) == 0).float().mean()
        acc_after = (model(x).argmax(-1) == 0).float().mean()
    assert acc_before == 1.0 and acc_after < 0.5


def test_ssd_says_so_when_the_selection_can_never_trigger():
    sp, model = split({"forget_fraction": 0.1}), trained_cnn()
    state = copy.deepcopy(model.state_dict())
    # the full set contains the forget set: with per-sample importance and alpha >= N / n_f nothing can be selected
    method = build_method("SSD", {"reference": "full", "importance": "per_sample", "alpha": 12.0})
    with pytest.warns(RuntimeWarning) as record:
        method.apply(model, sp.forget, sp.retain, ADAPTER, 0)
    messages = " ".join(str(w.message) for w in record)
    assert "can never select" in messages and "dampened no parameter" in messages
    assert method.stats["selected"] == 0 and method.stats["dampened"] == 0 and len(method.warnings) == 2
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
