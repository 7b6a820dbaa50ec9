"""Every registered method has a tune search space on each of its tracks, and every key is real."""

import dataclasses

import pytest
from omegaconf import OmegaConf
from transformers import TrainingArguments

from obliviate.engine.trainer import UnlearningTrainer
from obliviate.methods import METHODS
from obliviate.pipelines.study import parse_space
from obliviate.pipelines.tune import SPACE_DIR, space_file

PAIRS = sorted((track, name) for name in METHODS.names() for track in (METHODS.meta(name).get("tracks") or ("vision", "llm")))
ARG_FIELDS = {f.name for f in dataclasses.fields(TrainingArguments)}


def _config_fields(name: str) -> set[str]:
    entry = METHODS.get(name)
    cfg_cls = entry.Config if isinstance(entry, type) and (issubclass(entry, UnlearningTrainer) or hasattr(entry, "Config")) else None
    return {f.name for f in dataclasses.fields(cfg_cls)} if cfg_cls is not None and dataclasses.is_dataclass(cfg_cls) else set()


@pytest.mark.parametrize(("track", "name"), PAIRS, ids=[f"{t}/{n}" for t, n in PAIRS])
def test_every_method_has_a_valid_space(track, name):
    path = space_file(track, name)
    assert path.is_file(), f"no search space {path} for {name} on the {track} track"
    space = parse_space(OmegaConf.to_container(OmegaConf.load(path).params), where=str(path))
    fields = _config_fields(name)
    one_shot = bool(getattr(METHODS.get(name), "one_shot", False))
    for key in space:
        group, _, field = key.rpartition(".")
        assert group in ("trainer.args", "trainer.method_args"), key
        if group == "trainer.args":
            assert field in ARG_FIELDS, f"{key}: not a TrainingArguments field"
            assert not one_shot, f"{name} is one-shot (no training steps): {key} would change nothing"
        else:
            assert field in fields, f"{key}: {name}'s config has no field {field} (fields: {sorted(fields)})"
    if not one_shot:  # trained methods: learning rate and epochs are always searched
        assert {"trainer.args.learning_rate", "trainer.args.num_train_epochs"} <= set(space), name


def test_no_space_without_a_registered_method():
    for path in SPACE_DIR.glob("*/*.yaml"):
        track, name = path.parent.name, path.stem
        assert name in METHODS.names() and track in (METHODS.meta(name).get("tracks") or (track,)), path
