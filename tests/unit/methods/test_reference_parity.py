"""Each LLM method's default loss equals the reference framework's ``compute_loss`` on a fixed batch.

The ``ref_*`` functions below are ports of open-unlearning's code (``src/trainer/utils.py`` and
``src/trainer/unlearn/*.py``, main of Dec 2025), written from its arithmetic, not from ours:
``model(**inputs).loss`` is HF's own loss (the reference calls it), the KL retain term is
``kl_div(log p_θ, log p_ref, reduction="batchmean", log_target=True)`` over every position, NPO and
DPO use ``compute_batch_nll`` sums, and so on. Same model, same reference model, same batch.

Where the reference has a bug that obliviate does not copy (the KL retain term and UNDIAL
average over padding, UNDIAL also over prompt positions and indexes the vocabulary with
``-100``), the parity batch avoids the bug's trigger (no padding, no prompt) and a second test
shows that on a padded, prompted batch obliviate equals the port restricted to the positions
that should count. The seed-003 KL method and IdK have no compute_loss in the reference
framework: IdK follows the TOFU code (``idk`` loss: ``outputs.loss`` of the refusal and retain
batches concatenated), KL its documented formula (see docs/llm.md).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from obliviate.engine.trainer import frozen_copy
from obliviate.methods import build_method
from obliviate.methods._common import pad_collate

from .conftest import IDK_ANSWER, forget_items, make_ctx, make_item, pair_batch, sharp_llama, tiny_llama

TOL = {"rel": 1e-5, "abs": 1e-5}


def _lm(sub):
    return {"input_ids": sub["input_ids"], "attention_mask": sub["attention_mask"], "labels": sub["labels"]}


# ----------------------------------------------------------------------------- ports of the reference
def hf_loss(model, inputs):
    """``model(**inputs).loss``: what every reference NLL term is."""
    return model(**_lm(inputs)).loss


def ref_kl_divergence(model, target_model, inputs):
    """``trainer.utils.compute_kl_divergence``."""
    with torch.no_grad():
        ref_outputs = target_model(**_lm(inputs))
    ref_probs = F.log_softmax(ref_outputs.logits, dim=-1)
    ref_probs = ref_probs.view(-1, ref_outputs.logits.shape[-1])
    outputs = model(**_lm(inputs))
    current_probs = F.log_softmax(outputs.logits, dim=-1)
    current_probs = current_probs.view(-1, outputs.logits.shape[-1])
    return nn.functional.kl_div(current_probs, ref_probs, reduction="batchmean", log_target=True)


def ref_batch_nll(model, inputs):
    """``trainer.utils.compute_batch_nll``: summed NLL per sequence."""
    outputs = model(**_lm(inputs))
    logits = outputs.logits
    labels = inputs["labels"]
    shifted_labels = labels[..., 1:].contiguous()
    logits = logits[..., :-1, :].contiguous()
    loss_function = nn.CrossEntropyLoss(ignore_index=-100, reduction="none")
    return loss_function(logits.transpose(-1, -2), shifted_labels).sum(dim=-1)


def ref_dpo_loss(model, ref_model, win_inputs=None, lose_inputs=None, beta=1.0):
    """``trainer.utils.compute_dpo_loss``."""
    win_log_ratio, lose_log_ratio = 0.0, 0.0
    if win_inputs is not None:
        win_loss = ref_batch_nll(model, win_inputs)
        with torch.no_grad():
            win_ref_loss = ref_batch_nll(ref_model, win_inputs)
        win_log_ratio = -(win_loss - win_ref_loss)
    if lose_inputs is not None:
        lose_loss = ref_batch_nll(model, lose_inputs)
        with torch.no_grad():
            lose_ref_loss = ref_batch_nll(ref_model, lose_inputs)
        lose_log_ratio = -(lose_loss - lose_ref_loss)
    return -2 / beta * F.logsigmoid(beta * (win_log_ratio - lose_log_ratio)).mean()


def ref_undial_loss(model, ref_model, inputs, beta):
    """``trainer.utils.compute_undial_loss`` (mean over every position of the batch)."""
    logits = model(**_lm(inputs)).logits
    labels = inputs["labels"]
    shift_labels = labels[..., 1:].contiguous()
    shift_logits = logits[..., :-1, :].contiguous()
    with torch.no_grad():
        teacher_logits = ref_model(**_lm(inputs)).logits
    shift_teacher_logits = teacher_logits[..., :-1, :].contiguous()
    mask = torch.zeros_like(shift_teacher_logits)
    batch_idx = torch.arange(mask.shape[0]).view(-1, 1, 1)
    seq_idx = torch.arange(mask.shape[1]).view(1, -1, 1)
    mask[batch_idx, seq_idx, shift_labels.unsqueeze(-1)] = 1.0
    pre_softmax = shift_teacher_logits - mask * beta
    soft_label = F.softmax(pre_softmax, dim=-1)
    loss = nn.CrossEntropyLoss(reduction="none")(shift_logits.view(-1, shift_logits.size(-1)), soft_label.view(-1, soft_label.size(-1)))
    return loss.mean()


def _shifted_lm_loss(model, inputs):
    outputs = model(**_lm(inputs))
    shift_logits = outputs.logits[..., :-1, :].contiguous()
    shift_labels = inputs["labels"][..., 1:].contiguous()
    lm_loss = nn.CrossEntropyLoss(ignore_index=-100, reduction="none")(shift_logits.view(-1, shift_logits.size(-1)), shift_labels.view(-1))
    return lm_loss, shift_labels


def ref_wga_loss(model, inputs, beta):
    """``trainer.utils.compute_wga_loss``."""
    lm_loss, shift_labels = _shifted_lm_loss(model, inputs)
    weight_ce = ((-lm_loss).exp().detach()) ** beta
    return -(weight_ce * lm_loss)[shift_labels.view(-1) != -100].mean()


def ref_satimp_loss(model, inputs, beta1, beta2):
    """``trainer.utils.compute_satimp_loss``."""
    lm_loss, shift_labels = _shifted_lm_loss(model, inputs)
    weight_sat = ((-lm_loss).exp().detach()) ** beta1
    weight_imp = (1 - (-lm_loss).exp().detach()) ** beta2
    return -((weight_sat * weight_imp) * lm_loss)[shift_labels.view(-1) != -100].mean()


def ref_ceu_loss(model, inputs, ignore_first_n_answer_tokens=1):
    """``trainer.unlearn.ceu.compute_batch_ceu`` + ``cross_entropy_unlearning_loss``."""
    logits = model(**_lm(inputs)).logits
    labels = inputs["labels"]
    valid_mask = labels != -100
    update_mask = (valid_mask.cumsum(dim=-1) <= ignore_first_n_answer_tokens) & valid_mask
    labels = labels.masked_fill(update_mask, -100)[..., 1:].contiguous()
    logits = logits[..., :-1, :].contiguous()
    keep = labels != -100
    valid_logits, valid_labels = logits[keep], labels[keep]
    target = valid_logits.detach().clone()
    target.scatter_(dim=-1, index=valid_labels.unsqueeze(-1), value=float("-inf"))
    return F.cross_entropy(input=valid_logits, target=F.softmax(target, dim=-1))


def tofu_idk_loss(model, idk_inputs, retain_inputs):
    """The TOFU code's ``idk`` loss (``dataloader.py``): ``torch.cat`` of the refusal and retain
    batches (the TOFU collator pads both to one length; here the narrower one is right-padded),
    one forward, ``outputs.loss``."""
    width = max(idk_inputs["input_ids"].shape[1], retain_inputs["input_ids"].shape[1])

    def widen(sub):
        extra = width - sub["input_ids"].shape[1]
        fill = {"input_ids": 0, "attention_mask": 0, "labels": -100}
        return {k: torch.cat([sub[k], torch.full((sub[k].shape[0], extra), v, dtype=sub[k].dtype)], 1) for k, v in fill.items()}

    a, b = widen(idk_inputs), widen(retain_inputs)
    input_ids = torch.cat((a["input_ids"], b["input_ids"]), dim=0)
    labels = torch.cat((a["labels"], b["labels"]), dim=0)
    attention_mask = torch.cat((a["attention_mask"], b["attention_mask"]), dim=0)
    return model(input_ids, labels=labels, attention_mask=attention_mask).loss


def ref_retain_loss(model, ref_model, retain, retain_loss_type):
    """``GradDiff.compute_retain_loss``."""
    if retain_loss_type == "NLL":
        return hf_loss(model, retain)
    return ref_kl_divergence(model, ref_model, retain)


def ref_rmu_loss(model, ref_model, inputs, layer, steering_coeff, alpha, gamma, control_vec):
    """``RMU.compute_loss`` (``forward_with_cache`` runs the full model; ``control_vec`` fixed)."""

    def forward_with_cache(m, sub, module, no_grad):
        cache = []
        handle = module.register_forward_hook(lambda _m, _i, out: cache.append(out[0] if isinstance(out, tuple) else out))
        with torch.set_grad_enabled(not no_grad):
            m(input_ids=sub["input_ids"], attention_mask=sub["attention_mask"])
        handle.remove()
        return cache[0]

    def activation_loss(a1, a2, mask):
        squared_diff = F.mse_loss(a1, a2, reduction="none")  # [b, s, d]
        expanded_mask = mask.unsqueeze(-1).expand_as(squared_diff)
        squared_diff_sum = (squared_diff * expanded_mask).mean(dim=2).sum(dim=(1))
        num_tokens = mask.sum(dim=-1, keepdim=True)
        return (squared_diff_sum / num_tokens).mean()

    forget, retain = inputs["forget"], inputs["retain"]
    module, ref_module = model.model.layers[layer], ref_model.model.layers[layer]
    h_f = forward_with_cache(model, forget, module, no_grad=False)
    cv = (control_vec / torch.norm(control_vec) * steering_coeff).to(dtype=h_f.dtype).expand_as(h_f)
    forget_loss = activation_loss(h_f, cv, forget["labels"] != -100)
    h_r = forward_with_cache(model, retain, module, no_grad=False)
    h_r_ref = forward_with_cache(ref_model, retain, ref_module, no_grad=True)
    retain_loss = activation_loss(h_r, h_r_ref, retain["labels"] != -100)
    return gamma * forget_loss + alpha * retain_loss


REFERENCE = {
    "GradAscent": lambda m, r, b, a: -hf_loss(m, b["forget"]),
    "GradDiff": lambda m, r, b, a: a["gamma"] * -hf_loss(m, b["forget"]) + a["alpha"] * ref_retain_loss(m, r, b["retain"], a["retain_loss_type"]),
    "NPO": lambda m, r, b, a: a["gamma"] * ref_dpo_loss(m, r, None, b["forget"], a["beta"]) + a["alpha"] * ref_retain_loss(m, r, b["retain"], a["retain_loss_type"]),
    "IdkDPO": lambda m, r, b, a: a["gamma"] * ref_dpo_loss(m, r, b["forget"]["idk"], b["forget"], a["beta"])
    + a["alpha"] * ref_retain_loss(m, r, b["retain"], a["retain_loss_type"]),
    "SimNPO": lambda m, r, b, a: a["gamma"] * (
        -F.logsigmoid(a["beta"] * (ref_batch_nll(m, b["forget"]) / (b["forget"]["labels"] != -100).sum(-1) - a["delta"])).mean() * 2 / a["beta"]
    ) + a["alpha"] * ref_retain_loss(m, r, b["retain"], "NLL"),
    "WGA": lambda m, r, b, a: a["gamma"] * ref_wga_loss(m, b["forget"], a["beta"]) + a["alpha"] * ref_retain_loss(m, r, b["retain"], a["retain_loss_type"]),
    "SatImp": lambda m, r, b, a: a["gamma"] * ref_satimp_loss(m, b["forget"], a["beta1"], a["beta2"])
    + a["alpha"] * ref_retain_loss(m, r, b["retain"], a["retain_loss_type"]),
    "UNDIAL": lambda m, r, b, a: a["gamma"] * ref_undial_loss(m, r, b["forget"], a["beta"])
    + a["alpha"] * ref_retain_loss(m, r, b["retain"], a["retain_loss_type"]),
    "CEU": lambda m, r, b, a: ref_ceu_loss(m, b["forget"], a["ignore_first_n_answer_tokens"]),
    # TOFU code, loss_type "idk": outputs.loss of one forward over the refusal and retain batches concatenated
    "IdK": lambda m, r, b, a: tofu_idk_loss(m, b["forget"]["idk"], b["retain"]),
}
DEFAULTS = {  # the reference framework's configs/trainer/<name>.yaml method_args
    "GradAscent": {},
    "GradDiff": {"gamma": 1.0, "alpha": 1.0, "retain_loss_type": "NLL"},
    "NPO": {"beta": 0.1, "alpha": 1.0, "gamma": 1.0, "retain_loss_type": "NLL"},
    "IdkDPO": {"beta": 0.1, "alpha": 1.0, "gamma": 1.0, "retain_loss_type": "NLL"},
    "SimNPO": {"delta": 0.0, "beta": 4.5, "alpha": 1.0, "gamma": 0.125, "retain_loss_type": "NLL"},
    "WGA": {"beta": 1.0, "alpha": 1.0, "gamma": 1.0, "retain_loss_type": "NLL"},
    "SatImp": {"beta1": 5.0, "beta2": 1.0, "alpha": 1.0, "gamma": 0.1, "retain_loss_type": "NLL"},
    "UNDIAL": {"gamma": 1.0, "alpha": 0.0, "beta": 10.0, "retain_loss_type": "NLL"},
    "CEU": {"ignore_first_n_answer_tokens": 1},
    "IdK": {"gamma": 1.0},
}


# ----------------------------------------------------------------------------- fixtures and batches
@pytest.fixture
def models():
    """(model, ref): two different sharp random models, so log-ratios are not zero."""
    return sharp_llama(1), frozen_copy(sharp_llama(0))


def _ours(name, args, model, ref, batch):
    method = build_method(name, args)
    ctx = make_ctx(method, model, ref if method.needs_reference else None)
    loss, _ = method.loss(model, batch, ctx)
    return loss.item()


def _same_length_batch(prompt_len: int = 3) -> dict:
    """Forget (with IDK) and retain rows of equal length: no padding anywhere. ``prompt_len=0``:
    every position after the first is an answer token (no prompt either)."""
    forget = [(list(range(5, 5 + prompt_len)), [20, 21, 22, 23, 24]), (list(range(8, 8 + prompt_len)), [25, 26, 27, 28, 29]),
              (list(range(12, 12 + prompt_len)), [30, 31, 32, 33, 20])]
    retain = [(list(range(40, 40 + prompt_len)), [41, 42, 43, 44]), (list(range(44, 44 + prompt_len)), [46, 47, 48, 49]),
              (list(range(50, 50 + prompt_len)), [54, 55, 56, 57])]
    idk = IDK_ANSWER + [60]
    return {"forget": pad_collate([{**make_item(p, a), "idk": make_item(p, idk)} for p, a in forget]),
            "retain": pad_collate([make_item(p, a) for p, a in retain])}


def _check(name, args, model, ref, batch, ours_args=None):
    got = _ours(name, {**args, **(ours_args or {})}, model, ref, batch)
    expected = REFERENCE[name](model, ref, batch, {**DEFAULTS[name], **args}).item()
    assert got == pytest.approx(expected, **TOL), f"{name}: obliviate {got:.7f} vs reference {expected:.7f}"
    return got


# ----------------------------------------------------------------------------- parity
@pytest.mark.parametrize("name", ["GradAscent", "GradDiff", "NPO", "IdkDPO", "SimNPO", "WGA", "SatImp", "CEU", "IdK"])
def test_default_loss_equals_the_reference_on_a_padded_prompted_batch(models, name):
    """These reference losses ignore prompt and padding correctly: parity on a padded batch
    (the retain and IDK rows have different lengths, plus 2 extra padding columns)."""
    model, ref = models
    _check(name, {}, model, ref, pair_batch(extra_pad=2))


@pytest.mark.parametrize("name", ["GradDiff", "NPO", "IdkDPO", "WGA", "SatImp"])
def test_kl_retain_term_equals_the_reference_on_an_unpadded_batch(models, name):
    """retain_loss_type=KL: KL(p_ref || p_θ) averaged over every position, prompt included
    (``compute_kl_divergence``); no padding, where the reference would average over it too."""
    model, ref = models
    _check(name, {"retain_loss_type": "KL", "alpha": 0.7}, model, ref, _same_length_batch())


def test_undial_equals_the_reference_on_a_batch_without_prompt_or_padding(models):
    """The reference averages UNDIAL over every position: on a batch where every shifted
    position is an answer token, that is the token mean over answer tokens."""
    model, ref = models
    batch = _same_length_batch(prompt_len=0)
    assert (batch["forget"]["labels"][:, 1:] != -100).all()
    _check("UNDIAL", {}, model, ref, batch)
    _check("UNDIAL", {"beta": 3.0, "alpha": 0.5}, model, ref, batch)  # with an NLL retain term
    _check("UNDIAL", {"alpha": 0.5, "retain_loss_type": "KL"}, model, ref, batch)  # with a KL retain term


def test_rmu_equals_the_reference_with_the_same_control_vector(models):
    """On a batch whose sequences have equal answer lengths (see the next test for why)."""
    model, ref = models
    layer, c = 1, 2.0
    batch = _same_length_batch()
    got = _ours("RMU", {"layer": layer, "steering_coeff": c}, model, ref, batch)
    d = model.config.hidden_size
    # the reference draws torch.rand(1, 1, d) from the global RNG; obliviate seeds it (vector_seed=0)
    control = torch.rand(1, 1, d, generator=torch.Generator().manual_seed(0))
    expected = ref_rmu_loss(model, ref, batch, layer, c, 1.0, 1.0, control).item()
    assert got == pytest.approx(expected, **TOL)


def test_rmu_averages_each_sequence_over_its_own_tokens_where_the_reference_broadcasts(models):
    """The reference's ``compute_activation_loss`` divides the per-sequence sums ``[b]`` by
    ``num_tokens [b, 1]``: a ``[b, b]`` broadcast, i.e. ``mean_i(S_i) · mean_j(1/n_j)`` instead of
    ``mean_i(S_i / n_i)``. With unequal answer lengths obliviate keeps the per-sequence mean."""
    model, ref = models
    batch = pair_batch(extra_pad=2)
    got = _ours("RMU", {"layer": 1, "alpha": 0.0}, model, ref, batch)
    control = torch.rand(1, 1, model.config.hidden_size, generator=torch.Generator().manual_seed(0))
    buggy = ref_rmu_loss(model, ref, batch, 1, 2.0, 0.0, 1.0, control).item()
    u = (control / control.norm() * 2.0).view(-1)
    forget = batch["forget"]
    vals = []
    for i in range(forget["input_ids"].shape[0]):
        keep = forget["attention_mask"][i].bool()
        h = _block_output(model, forget["input_ids"][i][keep][None], 1)[0]  # [L, d], the sequence alone
        sel = forget["labels"][i][keep] != -100
        vals.append(((h - u) ** 2).mean(-1)[sel].mean().item())
    assert got == pytest.approx(sum(vals) / len(vals), **TOL)
    assert abs(buggy - got) > 1e-3 * got


def _block_output(model, ids, layer):
    out = {}
    handle = model.model.layers[layer].register_forward_hook(lambda _m, _i, o: out.setdefault("h", o[0] if isinstance(o, tuple) else o))
    with torch.no_grad():
        model(input_ids=ids)
    handle.remove()
    return out["h"]


def test_kl_method_is_the_token_mean_of_kl_on_answer_tokens(models):
    """Seed 003's KL: the divergence KL(p_θ || p_ref) averaged over the batch's answer tokens
    (the seed averages its cross-entropy over all positions at once) + the retain outputs.loss."""
    model, ref = models
    batch = pair_batch(extra_pad=2)
    got = _ours("KL", {"gamma": 0.7, "alpha": 0.4}, model, ref, batch)
    forget = batch["forget"]
    with torch.no_grad():
        logq = F.log_softmax(ref(**{k: forget[k] for k in ("input_ids", "attention_mask")}).logits.double(), -1)[:, :-1]
        logp = F.log_softmax(model(**{k: forget[k] for k in ("input_ids", "attention_mask")}).logits.double(), -1)[:, :-1]
        kl = (logp.exp() * (logp - logq)).sum(-1)[forget["labels"][:, 1:] != -100]
        expected = -0.7 * kl.mean() + 0.4 * hf_loss(model, batch["retain"]).double()
    assert got == pytest.approx(expected.item(), **TOL)


# ----------------------------------------------------------------------------- the bugs not copied
def test_padding_stays_out_of_the_kl_retain_term_where_the_reference_lets_it_in(models):
    """With padding, ours = the reference's KL over the non-padding positions only; the
    reference itself (averaging over padding too) differs."""
    model, ref = models
    batch = pair_batch(extra_pad=2)
    got = _ours("GradDiff", {"retain_loss_type": "KL", "gamma": 0.0}, model, ref, batch)
    retain = batch["retain"]
    with torch.no_grad():
        logq = F.log_softmax(ref(input_ids=retain["input_ids"], attention_mask=retain["attention_mask"]).logits, -1)
        logp = F.log_softmax(model(input_ids=retain["input_ids"], attention_mask=retain["attention_mask"]).logits, -1)
        per_pos = (logq.exp() * (logq - logp)).sum(-1)  # KL(p_ref || p_θ) [b, s]
        keep = retain["attention_mask"].bool()
        expected = per_pos[keep].mean().item()
        buggy = ref_kl_divergence(model, ref, retain).item()
    assert got == pytest.approx(expected, **TOL)
    assert abs(buggy - expected) > 1e-3


def test_undial_counts_answer_tokens_only_where_the_reference_counts_every_position(models):
    model, ref = models
    batch = pair_batch(extra_pad=2)
    got = _ours("UNDIAL", {"beta": 3.0}, model, ref, batch)
    forget = batch["forget"]
    with torch.no_grad():
        kw = {"input_ids": forget["input_ids"], "attention_mask": forget["attention_mask"]}
        z, zr = model(**kw).logits[:, :-1], ref(**kw).logits[:, :-1]
        y = forget["labels"][:, 1:]
        keep = y != -100
        adj = zr[keep].clone()
        adj[torch.arange(adj.shape[0]), y[keep]] -= 3.0
        expected = -(F.softmax(adj, -1) * F.log_softmax(z[keep], -1)).sum(-1).mean().item()
    assert got == pytest.approx(expected, **TOL)


# ----------------------------------------------------------------------------- reductions differ
@pytest.mark.parametrize("name", ["GradAscent", "GradDiff", "WGA", "SatImp", "CEU", "IdK", "UNDIAL"])
def test_token_and_sequence_reductions_differ_on_this_batch(models, name):
    """The parity above is not vacuous: the per-sequence variant gives other numbers."""
    model, ref = models
    batch = pair_batch(extra_pad=2)
    token = _ours(name, {}, model, ref, batch)
    sequence = _ours(name, {"reduction": "sequence"}, model, ref, batch)
    assert abs(token - sequence) > 1e-3, (token, sequence)  # 100x the parity tolerance


def test_taskvector_finetunes_on_the_hf_loss(models, monkeypatch):
    """TaskVector's fine-tuning step descends ``outputs.loss`` (token mean). Its AdamW is swapped
    for SGD here, so one step is ``θ − lr·∇loss`` and the gradients can be compared."""
    from obliviate.models.adapters import CausalLMAdapter

    monkeypatch.setattr(torch.optim, "AdamW", lambda params, lr, weight_decay: torch.optim.SGD(params, lr=lr))
    model, _ = models
    items = [{k: v for k, v in it.items() if k != "idk"} for it in forget_items()]
    batch = pad_collate(items)
    twin = tiny_llama(0)
    twin.load_state_dict(model.state_dict())
    method = build_method("TaskVector", {"finetune_max_steps": 1, "finetune_batch_size": len(items), "finetune_lr": 1e-2})
    method.finetune(model, items, CausalLMAdapter(), seed=0)
    opt = torch.optim.SGD(twin.parameters(), lr=1e-2)
    twin.train()
    twin(**_lm(batch)).loss.backward()
    opt.step()
    for (name, p), q in zip(model.named_parameters(), twin.parameters(), strict=True):
        assert torch.allclose(p, q, atol=1e-6), name
