import json
import math

import pytest
import torch
from omegaconf import OmegaConf

from obliviate.engine.guard import DivergenceGuard, GuardConfig
from obliviate.errors import ConfigError
from obliviate.run import Run, config_hash


def test_guard_stops_on_nan_and_inf():
    g = DivergenceGuard()
    assert not g.check(0, 1.0)
    assert g.check(1, math.nan) and "nan" in g.reason and g.step == 1
    g = DivergenceGuard()
    assert g.check(3, math.inf)


def test_guard_retain_collapse_uses_floored_start_value():
    g = DivergenceGuard(GuardConfig(retain_loss_factor=10, retain_loss_floor=0.1))
    assert not g.check(0, -1.0, {"retain_loss": 0.01})  # start 0.01 -> floored to 0.1 -> limit 1.0
    assert not g.check(1, -5.0, {"retain_loss": 0.99})
    assert g.check(2, -9.0, {"retain_loss": 1.01}) and "exceeded 10x" in g.reason
    off = DivergenceGuard(GuardConfig(retain_loss_factor=None))
    assert not off.check(0, 0.0, {"retain_loss": 1e9})


def test_guard_restores_last_good_snapshot():
    model = torch.nn.Linear(2, 2)
    g = DivergenceGuard(GuardConfig(snapshot_every=2))
    good = model.weight.detach().clone()
    g.maybe_snapshot(model, 0)
    with torch.no_grad():
        model.weight.fill_(float("nan"))
    g.check(1, math.nan)
    g.maybe_snapshot(model, 5)  # ignored after divergence
    assert g.restore(model) == 0
    assert torch.equal(model.weight, good)
    assert g.report()["diverged"] and g.report()["restored_step"] == 0


def test_manifest_lifecycle_and_never_overwrite(tmp_path):
    cfg = OmegaConf.create({"seed": 3, "model": {"track": "vision", "builder": "digits_cnn"}, "paths": {"output_dir": str(tmp_path)}})
    data = tmp_path / "data.txt"
    data.write_text("hello")
    with Run(tmp_path, cfg, "unlearn") as run:
        run.data_files["train"] = str(data)
        m = json.loads((tmp_path / "manifest.json").read_text())
        assert m["status"] == "running" and m["ended_at"] is None
    m = json.loads((tmp_path / "manifest.json").read_text())
    assert m["status"] == "completed" and m["seed"] == 3
    assert m["data_files"]["train"]["sha256"] == "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
    assert m["versions"]["torch"] and m["model_source"] == {"builder": "digits_cnn"}
    with pytest.raises(ConfigError, match="already holds a completed unlearn run; pass overwrite=true"):
        Run(tmp_path, cfg, "unlearn")
    Run(tmp_path, cfg, "unlearn", overwrite=True)


def test_manifest_marks_failed_and_interrupted(tmp_path):
    cfg = OmegaConf.create({"seed": 0})
    with pytest.raises(RuntimeError):
        with Run(tmp_path / "a", cfg, "train"):
            raise RuntimeError("boom")
    m = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert m["status"] == "failed" and "boom" in m["error"]
    with pytest.raises(KeyboardInterrupt):
        with Run(tmp_path / "b", cfg, "train"):
            raise KeyboardInterrupt
    assert json.loads((tmp_path / "b" / "manifest.json").read_text())["status"] == "interrupted"
    with Run(tmp_path / "c", cfg, "train") as run:
        run.status = "diverged"
    assert json.loads((tmp_path / "c" / "manifest.json").read_text())["status"] == "diverged"


def test_config_hash_ignores_output_paths():
    a = OmegaConf.create({"seed": 0, "paths": {"output_dir": "x"}})
    b = OmegaConf.create({"seed": 0, "paths": {"output_dir": "y"}})
    c = OmegaConf.create({"seed": 1, "paths": {"output_dir": "x"}})
    assert config_hash(a) == config_hash(b) != config_hash(c)


def test_latest_checkpoint_skips_a_checkpoint_cut_short(tmp_path):
    from obliviate.pipelines.common import latest_checkpoint

    assert latest_checkpoint(tmp_path / "none") is None
    for step, state in ((4, "{}"), (8, '{"global_step": 8}'), (12, None), (16, '{"global_st')):
        d = tmp_path / f"checkpoint-{step}"
        d.mkdir()
        (d / "model.safetensors").write_bytes(b"x")
        if state is not None:  # 12: killed before trainer_state.json; 16: killed while writing it
            (d / "trainer_state.json").write_text(state)
    assert latest_checkpoint(tmp_path).endswith("checkpoint-8")
