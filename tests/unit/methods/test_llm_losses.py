"""Each LLM method's ``reduction="sequence"`` loss (obliviate's earlier default: per-sequence
means, KL(p_θ || p_ref) on answer tokens) against an independent per-sequence implementation
(float64 loops over unpadded sequences) on a tiny 2-layer Llama, with padded batches. The
default ``reduction="token"`` is checked against ports of the reference framework in
``test_reference_parity.py``."""

from __future__ import annotations

import math

import pytest
import torch

from obliviate.engine.trainer import frozen_copy
from obliviate.errors import ConfigError, DataError
from obliviate.methods import build_method

from .conftest import answer_rows, make_ctx, pair_batch, seq_logprob, seq_nll, sharp_llama, tiny_llama


@pytest.fixture
def models():
    """(model, ref): two different random models with peaked next-token distributions (per-token
    NLLs far from uniform, so per-sequence and token means differ); log-ratios are not zero."""
    return sharp_llama(1), frozen_copy(sharp_llama(0))


def _loss(name, args, model, ref, extra_pad=2):
    method = build_method(name, {"reduction": "sequence", **args})
    ctx = make_ctx(method, model, ref if method.needs_reference else None)
    batch = pair_batch(extra_pad=extra_pad)
    loss, logs = method.loss(model, batch, ctx)
    return loss.item(), batch, logs


def _retain_nll(model, batch):
    return seq_nll(model, batch["retain"]).mean().item()


def test_kl(models):
    model, ref = models
    args = {"gamma": 0.7, "alpha": 0.4}
    got, batch, _ = _loss("KL", args, model, ref)
    kls = []
    for (z, _), (zr, _) in zip(answer_rows(model, batch["forget"]), answer_rows(ref, batch["forget"]), strict=True):
        lp, lq = torch.log_softmax(z, -1), torch.log_softmax(zr, -1)
        kls.append((lp.exp() * (lp - lq)).sum(-1).mean().item())
    expected = -0.7 * sum(kls) / len(kls) + 0.4 * _retain_nll(model, batch)
    assert got == pytest.approx(expected, rel=1e-4)
    cap = sorted(kls)[1]
    got_cap, _, _ = _loss("KL", {**args, "max_kl": cap}, model, ref)
    expected_cap = -0.7 * sum(min(k, cap) for k in kls) / len(kls) + 0.4 * _retain_nll(model, batch)
    assert got_cap == pytest.approx(expected_cap, rel=1e-4)


def test_npo(models):
    model, ref = models
    beta, gamma, alpha = 0.1, 0.7, 0.4
    got, batch, _ = _loss("NPO", {"beta": beta, "gamma": gamma, "alpha": alpha}, model, ref)
    ratio = seq_logprob(model, batch["forget"]) - seq_logprob(ref, batch["forget"])
    assert ratio.abs().max() > 0.1  # a real test: the log-ratios are not zero
    f = (2 / beta) * sum(math.log1p(math.exp(beta * r)) for r in ratio.tolist()) / len(ratio)
    assert got == pytest.approx(gamma * f + alpha * _retain_nll(model, batch), rel=1e-4)


def test_simnpo_needs_no_reference(models):
    model, _ = models
    beta, delta, gamma, alpha = 4.5, 0.3, 0.125, 1.0
    method = build_method("SimNPO", {"delta": delta})
    assert not method.needs_reference
    got, batch, _ = _loss("SimNPO", {"delta": delta}, model, None)
    nll = seq_nll(model, batch["forget"]).tolist()
    f = -(2 / beta) * sum(-math.log1p(math.exp(-beta * (x - delta))) for x in nll) / len(nll)
    assert got == pytest.approx(gamma * f + alpha * _retain_nll(model, batch), rel=1e-4)


def test_idkdpo(models):
    model, ref = models
    beta, gamma, alpha = 0.1, 0.8, 0.5
    got, batch, _ = _loss("IdkDPO", {"gamma": gamma, "alpha": alpha}, model, ref)
    win, lose = batch["forget"]["idk"], batch["forget"]
    margin = (seq_logprob(model, win) - seq_logprob(ref, win)) - (seq_logprob(model, lose) - seq_logprob(ref, lose))
    f = -(2 / beta) * sum(-math.log1p(math.exp(-beta * m)) for m in margin.tolist()) / len(margin)
    assert got == pytest.approx(gamma * f + alpha * _retain_nll(model, batch), rel=1e-4)


@pytest.mark.parametrize("name", ["IdK", "PO"])
def test_idk(models, name):
    model, _ = models
    got, batch, _ = _loss(name, {"gamma": 0.3}, model, None)
    expected = seq_nll(model, batch["forget"]["idk"]).mean().item() + 0.3 * _retain_nll(model, batch)
    assert got == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize("name", ["IdK", "IdkDPO"])
def test_idk_methods_without_idk_answers_fail_clearly(models, name):
    model, ref = models
    method = build_method(name)
    ctx = make_ctx(method, model, ref if method.needs_reference else None)
    batch = pair_batch()
    del batch["forget"]["idk"]
    with pytest.raises(DataError, match="idk"):
        method.loss(model, batch, ctx)


def _token_weighted(model, batch, weight):
    per_seq = []
    for z, y in answer_rows(model, batch["forget"]):
        lp = torch.log_softmax(z, -1)[range(len(y)), y]
        per_seq.append((weight(lp.exp()) * -lp).mean().item())
    return sum(per_seq) / len(per_seq)


def test_wga(models):
    model, _ = models
    got, batch, _ = _loss("WGA", {"beta": 2.0, "gamma": 0.9, "alpha": 0.2}, model, None)
    expected = -0.9 * _token_weighted(model, batch, lambda p: p**2.0) + 0.2 * _retain_nll(model, batch)
    assert got == pytest.approx(expected, rel=1e-4)


def test_wga_with_beta_zero_is_graddiff(models):
    model, _ = models
    wga, _, _ = _loss("WGA", {"beta": 0.0}, model, None)
    gd, _, _ = _loss("GradDiff", {}, model, None)
    assert wga == pytest.approx(gd, rel=1e-6)


def test_satimp(models):
    model, _ = models
    got, batch, _ = _loss("SatImp", {"beta1": 3.0, "beta2": 2.0}, model, None)
    # the reference framework's weights: forget gamma = 0.1, retain alpha = 1
    expected = -0.1 * _token_weighted(model, batch, lambda p: p**3.0 * (1 - p) ** 2.0) + 1.0 * _retain_nll(model, batch)
    assert got == pytest.approx(expected, rel=1e-4)


def test_undial(models):
    model, ref = models
    beta = 3.0
    got, batch, _ = _loss("UNDIAL", {"beta": beta, "alpha": 0.5}, model, ref)
    per_seq = []
    for (z, y), (zr, _) in zip(answer_rows(model, batch["forget"]), answer_rows(ref, batch["forget"]), strict=True):
        adj = zr.clone()
        adj[range(len(y)), y] -= beta
        soft = torch.softmax(adj, -1)
        per_seq.append((-(soft * torch.log_softmax(z, -1)).sum(-1)).mean().item())
    expected = sum(per_seq) / len(per_seq) + 0.5 * _retain_nll(model, batch)
    assert got == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize("skip", [0, 1])
def test_ceu(models, skip):
    model, _ = models
    got, batch, _ = _loss("CEU", {"ignore_first_n_answer_tokens": skip}, model, None)
    per_seq = []
    for z, y in answer_rows(model, batch["forget"]):
        z, y = z[skip:], y[skip:]
        masked = z.clone()
        masked[range(len(y)), y] = float("-inf")
        q = torch.softmax(masked, -1)
        per_seq.append((-(q * torch.log_softmax(z, -1)).sum(-1)).mean().item())
    assert got == pytest.approx(sum(per_seq) / len(per_seq), rel=1e-4)
    assert not build_method("CEU").needs_retain and build_method("CEU", {"alpha": 1.0}).needs_retain


@pytest.mark.parametrize("tokens", ["answer", "all"])
def test_rmu(models, tokens):
    model, ref = models
    c, alpha = 3.0, 0.6
    args = {"layer": 0, "steering_coeff": c, "alpha": alpha, "tokens": tokens}
    got, batch, _ = _loss("RMU", args, model, ref)
    u = torch.rand(32, generator=torch.Generator().manual_seed(0)).double()
    u = u / u.norm()

    def per_seq(sub, target_fn):
        vals = []
        for i in range(sub["input_ids"].shape[0]):
            keep = sub["attention_mask"][i].bool()
            ids, labels = sub["input_ids"][i][keep], sub["labels"][i][keep]
            with torch.no_grad():
                h = model(input_ids=ids[None], output_hidden_states=True).hidden_states[1][0].double()  # block 0 output
            sel = labels != -100 if tokens == "answer" else torch.ones_like(labels, dtype=torch.bool)
            vals.append(((h - target_fn(ids)) ** 2).mean(-1)[sel].mean().item())
        return sum(vals) / len(vals)

    def ref_h(ids):
        with torch.no_grad():
            return ref(input_ids=ids[None], output_hidden_states=True).hidden_states[1][0].double()

    expected = per_seq(batch["forget"], lambda ids: c * u) + alpha * per_seq(batch["retain"], ref_h)
    assert got == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize(("name", "args"), [
    ("NPO", {"beta": 0.0}), ("NPO", {"retain_loss_type": "MSE"}), ("NPO", {"ref_cache": "never"}), ("SimNPO", {"beta": -1.0}),
    ("KL", {"max_kl": 0.0}), ("RMU", {"tokens": "some"}), ("RMU", {"param_regex": "("}), ("TaskVector", {"alpha": 0.0}),
    ("CEU", {"ignore_first_n_answer_tokens": -1}), ("IdkDPO", {"retain_loss_type": "EMBED_DIFF"}),
    ("GradDiff", {"reduction": "mean"}), ("WGA", {"reduction": "batch"}), ("RMU", {"trainable": "mlp"}), ("UNDIAL", {"alpha": -1.0}),
])
def test_bad_arguments_raise_config_error(name, args):
    with pytest.raises(ConfigError):
        build_method(name, args)


def test_rmu_bad_layers_raise_config_error(models):
    _, ref = models
    for args in ({"layer": 5}, {"layer": 0, "trainable": "layers", "trainable_layers": [1]},
                 {"layer": 1, "trainable": "layers", "param_regex": "nothing_matches"}):
        with pytest.raises(ConfigError):
            make_ctx(build_method("RMU", args), tiny_llama(1), ref)


def test_gradients_are_finite(models):
    model, ref = models
    for name in ("KL", "NPO", "UNDIAL", "CEU", "SatImp"):
        method = build_method(name)
        ctx = make_ctx(method, model, ref if method.needs_reference else None)
        loss, _ = method.loss(model, pair_batch(), ctx)
        grads = torch.autograd.grad(loss, [p for p in model.parameters() if p.requires_grad], allow_unused=True)
        assert all(g is None or torch.isfinite(g).all() for g in grads), name
