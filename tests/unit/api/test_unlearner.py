"""Unlearner (seed 004): LoRA unlearning end to end on tiny parquet data."""

import copy
import sys
import types

import pytest
import torch
import torch.nn.functional as F

from obliviate.errors import ConfigError
from obliviate.vision import ImageNetEvaluator, RunLogger, Unlearner, UnlearnerConfig


def _acc(model, val_loader):
    return ImageNetEvaluator(model, val_loader, device="cpu", forget_class=0).run().summary()


def test_end_to_end_forget_accuracy_drops_and_model_is_not_mutated(data_manager, trained_net, tmp_path):
    val, forget, retain = data_manager.get_loaders(forget_class=0, batch_size=16)
    before = _acc(trained_net, val)
    assert before["forget_accuracy"] > 90
    state = copy.deepcopy(trained_net.state_dict())
    cfg = UnlearnerConfig(epochs=10, lr=2e-2, rank=4, alpha=8, lambda_retain=1.0, device="cpu", forget_threshold=0.05,
                          use_tensorboard=True, tensorboard_log_dir=str(tmp_path / "tb"))
    unlearner = Unlearner(model=trained_net, forget_loader=forget, retain_loader=retain, config=cfg)
    trained = unlearner.train()
    after = _acc(trained, val)
    assert after["forget_accuracy"] < before["forget_accuracy"] - 50
    assert after["retain_accuracy"] > 60
    assert unlearner.history and unlearner.history[-1]["forget_prob"] < 0.5
    # only adapters trained; the input model is untouched (weights and modules)
    assert all("lora_" in n for n, p in trained.named_parameters() if p.requires_grad)
    assert all(torch.equal(v, state[k]) for k, v in trained_net.state_dict().items())
    assert not any("lora" in n for n, _ in trained_net.named_modules())
    trained.save_pretrained(tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))


def test_train_step_is_the_override_point(data_manager, trained_net):
    _, forget, retain = data_manager.get_loaders(forget_class=0, batch_size=16)
    calls = []

    class KLUnlearner(Unlearner):
        def _train_step(self, f_images, f_labels, r_images, r_labels):
            logits = self.model(f_images)
            uniform = torch.full_like(logits, 1.0 / logits.shape[-1])
            loss = F.kl_div(F.log_softmax(logits, -1), uniform, reduction="batchmean")
            self._step_optimizer(loss)
            calls.append(len(f_labels))
            return loss.item(), self.forget_probability(logits, f_labels)

    un = KLUnlearner(model=trained_net, forget_loader=forget, retain_loader=retain,
                     config=UnlearnerConfig(epochs=2, lr=1e-2, rank=2, device="cpu", early_stop=False))
    un.train()
    assert sum(calls) == 2 * 24 and len(un.history) == 2


def test_config_validation():
    with pytest.raises(ConfigError, match="epochs"):
        UnlearnerConfig(epochs=0)
    with pytest.raises(ConfigError, match="forget_threshold"):
        UnlearnerConfig(forget_threshold=2.0)


class FakeWandb(types.ModuleType):
    """Records wandb.init kwargs and logged rows (no service process, no network)."""

    def __init__(self):
        super().__init__("wandb")
        self.inits, self.rows, self.finished = [], [], 0

    def init(self, **kwargs):
        self.inits.append(kwargs)
        fake = self

        class Run:
            def log(self, row, step=None):
                fake.rows.append((step, row))

            def finish(self):
                fake.finished += 1

        return Run()


def test_wandb_is_forced_offline_unless_wandb_mode_is_set(data_manager, trained_net, monkeypatch):
    fake = FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    _, forget, retain = data_manager.get_loaders(forget_class=0, batch_size=64)
    cfg = UnlearnerConfig(epochs=1, device="cpu", use_wandb=True, wandb_project="proj", wandb_run_name="run", early_stop=False)
    Unlearner(model=trained_net, forget_loader=forget, retain_loader=retain, config=cfg).train()
    assert fake.inits[0]["mode"] == "offline" and fake.inits[0]["project"] == "proj" and fake.inits[0]["name"] == "run"
    assert any("epoch/forget_prob" in row for _, row in fake.rows) and fake.finished == 1
    monkeypatch.setenv("WANDB_MODE", "disabled")
    RunLogger(use_wandb=True).close()
    assert fake.inits[1]["mode"] == "disabled"


def test_missing_wandb_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(ImportError, match="pip install wandb"):
        RunLogger(use_wandb=True)


@pytest.mark.slow
def test_real_wandb_runs_offline(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    logger = RunLogger(use_wandb=True, wandb_project="t", wandb_run_name="r", wandb_dir=str(tmp_path))
    logger.log({"x": 1.0}, step=1)
    logger.close()
    assert list(tmp_path.glob("wandb/offline-run-*"))
