"""Vision unlearning methods: a generic run over the registry, then exact checks of the
training-based methods (l1_sparse schedule, SalUn frozen weights, SCRUB alternation,
BadTeacher targets, LoRAUnlearner threshold and early stop)."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from obliviate.engine.trainer import frozen_copy
from obliviate.errors import ConfigError
from obliviate.methods import METHODS, build_method
from obliviate.methods.bad_teacher import random_teacher
from obliviate.methods.l1_sparse import l1_norm, l1_weight
from obliviate.methods.salun import saliency_mask
from obliviate.methods.scrub import distill_kl, step_kind
from obliviate.pipelines import vision

from .vision_helpers import ADAPTER, N_CLASSES, batch_of, context, make_trainer, split, trained_cnn

VISION = sorted(METHODS.names(tracks="vision"))


def _kl(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """KL(softmax p || softmax q) per row, written out in float64."""
    p, q = torch.softmax(p_logits.double(), -1), torch.softmax(q_logits.double(), -1)
    return (p * (p.log() - q.log())).sum(-1)


# ----------------------------------------------------------------------------- generic
@pytest.mark.parametrize("name", VISION)
def test_every_vision_method_runs_with_finite_loss_and_cleans_up(name, tmp_path):
    """Plumbing only (finite losses, hooks removed); whether a method *forgets* is tested at
    its preset in test_vision_effect.py."""
    sp = split()
    model = trained_cnn()
    args = {"per_device_train_batch_size": 8, "learning_rate": 1e-3, "max_steps": 3, "logging_steps": 1, "disable_tqdm": True,
            "use_cpu": True}
    with torch.random.fork_rng():
        model, _, history = vision.unlearn(model, name, None, sp, args, tmp_path, 0, N_CLASSES)
    losses = [h["loss"] for h in history if "loss" in h]
    if not METHODS.get(name).one_shot:
        assert losses, f"{name}: no loss was logged"
    assert all(math.isfinite(v) for v in losses), f"{name}: non-finite loss {losses}"
    with torch.no_grad():
        assert torch.isfinite(model(batch_of(sp.retain)["pixel_values"])).all()
    assert not any(p._backward_hooks for p in model.parameters()), f"{name} left gradient hooks on the model"


@pytest.mark.parametrize(("name", "args"), [
    ("l1_sparse", {"alpha": -1.0}), ("l1_sparse", {"schedule": "cosine"}), ("SalUn", {"threshold_ratio": 0.0}),
    ("SCRUB", {"kd_T": 0.0}), ("SCRUB", {"kl_direction": "both"}), ("BadTeacher", {"temperature": -1.0}), ("BadTeacher", {"pairing": "passes"}), ("BadTeacher", {"retain_fraction": 0.0}),
    ("LoRAUnlearner", {"forget_threshold": 2.0}), ("FF", {"max_std": 0.0}), ("IU", {"on_negligible": "ignore"}),
    ("IU", {"damping": 0.0}), ("SSD", {"reference": "test"}), ("SSD", {"importance": "exact"}), ("SalUn", {"ratio": 0.5}),
    ("SSD", {"batch_order": "label"}), ("RL", {"pairing": "mixed"}), ("SalUn", {"pairing": "mixed"}), ("l1_sparse", {"no_l1_epochs": -1}),
])
def test_bad_method_args_raise_config_error(name, args):
    with pytest.raises(ConfigError):
        build_method(name, args)


# ----------------------------------------------------------------------------- l1_sparse
def _reference_alpha(alpha: float, epoch: int, epochs: int, no_l1_epochs: int = 0) -> float:
    """Port of the reference ``FT_iter`` (Unlearn-Sparse ``unlearn/FT.py``): ``current_alpha``."""
    if epoch < epochs - no_l1_epochs:
        return alpha * (1 - epoch / (epochs - no_l1_epochs))
    elif epochs - no_l1_epochs == 0:
        return alpha
    return 0


def test_l1_schedule_numbers_match_the_reference():
    for epochs, no_l1 in ((10, 0), (5, 2), (3, 3), (1, 0)):
        assert [l1_weight(1e-3, e, epochs, "linear", no_l1) for e in range(epochs)] == pytest.approx(
            [_reference_alpha(1e-3, e, epochs, no_l1) for e in range(epochs)])
    assert [l1_weight(1e-3, t, 10, "linear_step") for t in range(10)] == pytest.approx([1e-3 * (10 - t) / 10 for t in range(10)])
    assert l1_weight(1e-3, 10, 10, "linear_step") == 0.0 and l1_weight(1e-3, 12, 10, "linear_step") == 0.0
    assert l1_weight(1e-3, 5, 10, "constant") == 1e-3 and l1_weight(1e-3, 5, None) == 1e-3


def test_l1_sparse_trains_with_the_per_epoch_weight_and_exact_loss(tmp_path):
    sp, model = split(), trained_cnn()  # 144 retain images: 3 steps per epoch at batch 64
    method = build_method("l1_sparse", {"alpha": 3e-3})
    trainer = make_trainer(model, method, sp, tmp_path, max_steps=-1, num_train_epochs=3, per_device_train_batch_size=64,
                           logging_strategy="steps", logging_steps=1)
    trainer.train()
    weights = [h["l1_weight"] for h in trainer.state.log_history if "l1_weight" in h]
    assert weights == pytest.approx([3e-3] * 3 + [2e-3] * 3 + [1e-3] * 3)  # constant within an epoch, as the reference
    # the loss is CE_retain + alpha_e * sum |theta|
    method.epoch, ctx = 1, context()
    batch = {"retain": batch_of(sp.retain, list(range(8)))}
    loss, logs = method.loss(model, batch, ctx)
    ce = ADAPTER.per_sample_nll(model, batch["retain"])[0].mean()
    expected = ce + 2e-3 * sum(p.abs().sum() for p in model.parameters())
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert logs["l1_norm"] == pytest.approx(l1_norm(model).item())


# ----------------------------------------------------------------------------- RL
def test_rl_takes_a_full_forget_pass_then_a_full_retain_pass_each_epoch(tmp_path):
    sp, model = split({"forget_fraction": 0.1}), trained_cnn()  # 16 forget, 144 retain
    method = build_method("RL")
    seen: list[tuple[str, list[int]]] = []
    loss_fn = method.loss

    def spy(model, batch, ctx):
        seen.extend((side, batch[side]["index"].tolist()) for side in batch)
        assert len(batch) == 1, "a step sees one side only"
        return loss_fn(model, batch, ctx)

    method.loss = spy
    trainer = make_trainer(model, method, sp, tmp_path, max_steps=-1, num_train_epochs=2, per_device_train_batch_size=8)
    trainer.train()
    per_epoch = math.ceil(16 / 8) + math.ceil(144 / 8)
    assert len(seen) == 2 * per_epoch and trainer.state.global_step == 2 * per_epoch
    for e in range(2):
        epoch = seen[e * per_epoch : (e + 1) * per_epoch]
        assert [side for side, _ in epoch] == ["forget"] * 2 + ["retain"] * 18
        assert sorted(i for _, rows in epoch[:2] for i in rows) == sorted(sp.forget.indices.tolist())
        assert sorted(i for _, rows in epoch[2:] for i in rows) == sorted(sp.retain.indices.tolist())


def test_rl_forget_and_retain_steps_are_the_references_cross_entropies():
    sp, model = split({"forget_fraction": 0.5}), trained_cnn()
    method, ctx = build_method("RL", {"alpha": 0.7}), context()
    f, r = batch_of(sp.forget, list(range(12))), batch_of(sp.retain, list(range(10)))
    ctx.generator.manual_seed(5)
    loss_f, logs = method.loss(model, {"forget": f}, ctx)
    wrong = ADAPTER.random_wrong_labels(f["labels"], torch.Generator().manual_seed(5))
    assert (wrong != f["labels"]).all() and set(logs) == {"forget_rl_loss"}
    with torch.no_grad():
        assert loss_f.item() == pytest.approx(torch.nn.functional.cross_entropy(model(f["pixel_values"]), wrong).item(), rel=1e-6)
        loss_r, logs = method.loss(model, {"retain": r}, ctx)
        assert set(logs) == {"retain_loss"}
        assert loss_r.item() == pytest.approx(0.7 * torch.nn.functional.cross_entropy(model(r["pixel_values"]), r["labels"]).item(), rel=1e-6)
    joint = build_method("RL", {"pairing": "joint"})
    assert joint.anchor == "forget" and method.anchor == "passes"


# ----------------------------------------------------------------------------- SalUn
def test_saliency_mask_is_the_global_top_fraction():
    grads = {"a": torch.tensor([0.1, -5.0, 0.3]), "b": torch.tensor([[-0.2, 4.0], [0.05, 1.0]])}
    masks = saliency_mask(grads, 0.5)  # 7 entries -> 3 salient: |-5|, |4|, |1|
    assert masks["a"].tolist() == [False, True, False]
    assert masks["b"].tolist() == [[False, True], [False, True]]
    assert sum(int(m.sum()) for m in saliency_mask(grads, 1.0).values()) == 7
    # only live entries count and rank: 4 live entries -> 2 salient; |-5| is pruned
    live = {"a": torch.tensor([True, False, True]), "b": torch.tensor([[True, False], [True, True]])}
    masks = saliency_mask(grads, 0.5, live)
    assert masks["a"].tolist() == [False, False, True] and masks["b"].tolist() == [[False, False], [False, True]]


def test_salun_ranks_only_the_live_weights_of_a_pruned_model():
    from obliviate.pruning import PRUNERS, attached_masks

    sp, model = split({"forget_fraction": 0.2}), trained_cnn()
    PRUNERS.get("omp")(model, rate=0.8)
    pruned = attached_masks(model)
    method = build_method("SalUn", {"threshold_ratio": 0.5})
    method.setup(model, context(forget_dataset=sp.forget))
    try:
        live_total = sum(int(pruned[n].sum()) if n in pruned else p.numel() for n, p in model.named_parameters())
        assert sum(int(m.sum()) for m in method.masks.values()) == int(0.5 * live_total)
        for n, m in pruned.items():
            assert not (method.masks[n] & ~m.bool()).any(), f"pruned entries of {n} marked salient"
    finally:
        method.remove_hooks()


def test_salun_frozen_weights_stay_bit_for_bit_under_adamw_weight_decay(tmp_path):
    sp, model = split({"forget_fraction": 0.2}), trained_cnn()
    original = {n: p.detach().clone() for n, p in model.named_parameters()}
    method = build_method("SalUn", {"threshold_ratio": 0.3})
    trainer = make_trainer(model, method, sp, tmp_path, max_steps=6, learning_rate=1e-2, weight_decay=0.1, optim="adamw_torch")
    total = sum(p.numel() for p in model.parameters())
    assert sum(int(m.sum()) for m in method.masks.values()) == int(0.3 * total)
    trainer.train()
    moved_salient = 0
    for n, p in model.named_parameters():
        m = method.masks[n]
        assert torch.equal(p.detach()[~m], original[n][~m]), f"frozen entries of {n} moved"
        moved_salient += int((p.detach()[m] != original[n][m]).sum())
        state = trainer.optimizer.state[p]  # Adam moments of frozen entries never saw a gradient
        assert torch.count_nonzero(state["exp_avg"][~m]) == 0 and torch.count_nonzero(state["exp_avg_sq"][~m]) == 0
    assert moved_salient > 0.5 * int(0.3 * total), "salient weights should train"
    assert not any(p._backward_hooks for p in model.parameters()), "gradient hooks must be removed after training"


def test_salun_forget_labels_are_never_the_true_labels():
    sp, model = split({"forget_fraction": 0.5}), trained_cnn()
    seen = []

    class Spy(type(ADAPTER)):
        def per_sample_nll(self, model, batch, labels=None):
            if labels is not None:
                seen.append((labels.clone(), batch["labels"].clone()))
            return super().per_sample_nll(model, batch, labels)

    method = build_method("SalUn")
    ctx = context(forget_dataset=sp.forget)
    ctx.adapter = Spy(N_CLASSES)
    method.setup(model, ctx)
    try:
        for _ in range(20):
            method.loss(model, {"forget": batch_of(sp.forget), "retain": batch_of(sp.retain, list(range(8)))}, ctx)
    finally:
        method.remove_hooks()
    assert seen and all((wrong != true).all() for wrong, true in seen)


# ----------------------------------------------------------------------------- SCRUB
def test_scrub_step_kinds():
    kinds = [step_kind(s, msteps=2, n_max=2, n_min=3) for s in range(13)]
    assert kinds == ["max", "max", "min", "min", "min", "max", "max", "min", "min", "min", "min", "min", "min"]
    assert all(step_kind(s, 0, 2, 3) == "min" for s in range(10))


def test_scrub_alternates_max_and_min_steps_in_training(tmp_path):
    sp, model = split(), trained_cnn()
    method = build_method("SCRUB", {"msteps": 2, "max_steps_per_round": 2, "min_steps_per_round": 3})
    trainer = make_trainer(model, method, sp, tmp_path, max_steps=12, logging_strategy="steps", logging_steps=1)
    trainer.train()
    by_step = dict(method.kinds)
    assert [by_step[s] for s in range(12)] == ["max", "max", "min", "min", "min", "max", "max", "min", "min", "min", "min", "min"]
    flags = [h["scrub_max_step"] for h in trainer.state.log_history if "scrub_max_step" in h]
    assert flags == [1.0, 1.0, 0, 0, 0, 1.0, 1.0, 0, 0, 0, 0, 0]


def test_scrub_max_step_uses_only_forget_and_min_step_only_retain():
    sp, model = split(), trained_cnn()
    teacher = frozen_copy(model)
    with torch.no_grad():  # make student and teacher differ
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    method = build_method("SCRUB", {"max_steps_per_round": 1, "min_steps_per_round": 1, "msteps": 1, "alpha": 0.5, "gamma": 0.7})
    ctx = context(ref_model=teacher)
    f, r = batch_of(sp.forget), batch_of(sp.retain, list(range(10)))
    r2 = batch_of(sp.retain, list(range(10, 20)))
    ctx.step = 0  # max
    loss_max, _ = method.loss(model, {"forget": f, "retain": r}, ctx)
    assert method.loss(model, {"forget": f, "retain": r2}, ctx)[0].item() == loss_max.item()
    with torch.no_grad():
        expected = -(_kl(teacher(f["pixel_values"]) / 4, model(f["pixel_values"]) / 4) * 16).mean()
    assert loss_max.item() == pytest.approx(expected.item(), rel=1e-5)
    ctx.step = 1  # min
    loss_min, _ = method.loss(model, {"forget": f, "retain": r}, ctx)
    assert method.loss(model, {"forget": batch_of(sp.forget, [0, 1]), "retain": r}, ctx)[0].item() == loss_min.item()
    with torch.no_grad():
        ce = torch.nn.functional.cross_entropy(model(r["pixel_values"]), r["labels"])
        kl = (distill_kl(model(r["pixel_values"]), teacher(r["pixel_values"]), 4.0)).mean()
    assert loss_min.item() == pytest.approx((0.7 * ce + 0.5 * kl).item(), rel=1e-5)


# ----------------------------------------------------------------------------- BadTeacher
def _reference_unlearner_loss(output, labels, full_teacher_logits, unlearn_teacher_logits, KL_temperature):
    """Port of the reference ``UnlearnerLoss`` (vikram2000b/bad-teaching-unlearning ``unlearn.py``);
    label 1 = forget sample, 0 = retain sample."""
    labels = torch.unsqueeze(labels, dim=1)
    f_teacher_out = torch.softmax(full_teacher_logits / KL_temperature, dim=1)
    u_teacher_out = torch.softmax(unlearn_teacher_logits / KL_temperature, dim=1)
    overall_teacher_out = labels * u_teacher_out + (1 - labels) * f_teacher_out
    student_out = torch.log_softmax(output / KL_temperature, dim=1)
    return torch.nn.functional.kl_div(student_out, overall_teacher_out)


def test_bad_teacher_kl_targets():
    sp, model = split(), trained_cnn()
    ref = frozen_copy(model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    method = build_method("BadTeacher", {"temperature": 2.0, "retain_weight": 0.3, "teacher_seed": 7, "pairing": "pairs"})
    ctx = context(ref_model=ref)
    method.setup(model, ctx)
    bad = method.bad_teacher
    assert not any(p.requires_grad for p in bad.parameters()) and not bad.training
    assert any(not torch.equal(a, b) for a, b in zip(bad.parameters(), ref.parameters())), "the bad teacher must be re-initialised"
    again = random_teacher(ref, 7)
    assert all(torch.equal(a, b) for a, b in zip(bad.parameters(), again.parameters())), "seeded"
    f, r = batch_of(sp.forget), batch_of(sp.retain, list(range(12)))
    loss, _ = method.loss(model, {"forget": f, "retain": r}, ctx)
    with torch.no_grad():
        s_f, s_r = model(f["pixel_values"]) / 2, model(r["pixel_values"]) / 2
        expected = _kl(bad(f["pixel_values"]) / 2, s_f).mean() + 0.3 * _kl(ref(r["pixel_values"]) / 2, s_r).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_bad_teacher_mixed_batches_are_the_references_loss():
    """The default (``pairing="mixed"``): one average of per-sample KLs over a batch that mixes
    forget and retain samples = the reference's ``UnlearnerLoss`` times the number of classes
    (its ``kl_div`` mean also divides by the classes)."""
    sp, model = split(), trained_cnn()
    ref = frozen_copy(model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    method = build_method("BadTeacher", {"temperature": 2.0, "teacher_seed": 7})
    assert method.anchor == "mixed" and method.retain_fraction == 0.3
    ctx = context(ref_model=ref)
    method.setup(model, ctx)
    f, r = batch_of(sp.forget, [0, 1, 2]), batch_of(sp.retain, list(range(9)))
    loss, _ = method.loss(model, {"forget": f, "retain": r}, ctx)
    x = torch.cat([f["pixel_values"], r["pixel_values"]])
    flags = torch.tensor([1.0] * 3 + [0.0] * 9)
    with torch.no_grad():
        expected = _reference_unlearner_loss(model(x), flags, ref(x), method.bad_teacher(x), 2.0) * N_CLASSES
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    only_forget, _ = method.loss(model, {"forget": f}, ctx)  # a batch may hold one side only
    with torch.no_grad():
        assert only_forget.item() == pytest.approx(_kl(method.bad_teacher(f["pixel_values"]) / 2, model(f["pixel_values"]) / 2).mean().item(), rel=1e-5)


# ----------------------------------------------------------------------------- LoRAUnlearner
def test_lora_unlearner_drops_the_forget_term_below_the_threshold():
    sp, model = split(), trained_cnn()
    batch = {"forget": batch_of(sp.forget), "retain": batch_of(sp.retain, list(range(8)))}
    with torch.no_grad():
        ce_f = ADAPTER.per_sample_nll(model, batch["forget"])[0]
        ce_r = ADAPTER.per_sample_nll(model, batch["retain"])[0].mean()
    p_f = torch.exp(-ce_f).mean().item()
    active = build_method("LoRAUnlearner", {"lambda_retain": 2.0, "forget_threshold": p_f / 2})
    loss, logs = active.loss(model, batch, context())
    assert logs["forget_term_active"] == 1.0 and logs["forget_prob"] == pytest.approx(p_f)
    assert loss.item() == pytest.approx((2.0 * ce_r - ce_f.mean()).item(), rel=1e-5)
    dropped = build_method("LoRAUnlearner", {"lambda_retain": 2.0, "forget_threshold": min(1.0, p_f * 2)})
    loss, logs = dropped.loss(model, batch, context())
    assert logs["forget_term_active"] == 0.0 and loss.item() == pytest.approx(2.0 * ce_r.item(), rel=1e-5)


@pytest.mark.parametrize(("threshold", "epochs_run"), [(1.0, 1), (0.0, 3)])
def test_lora_unlearner_early_stops_on_the_epoch_forget_probability(threshold, epochs_run, tmp_path):
    sp, model = split(), trained_cnn()
    method = build_method("LoRAUnlearner", {"forget_threshold": threshold})
    trainer = make_trainer(model, method, sp, tmp_path, max_steps=-1, num_train_epochs=3, per_device_train_batch_size=8)
    trainer.train()
    assert len(method.history) == epochs_run and method.stopped_early == (epochs_run < 3)
    assert round(trainer.state.epoch) == epochs_run
