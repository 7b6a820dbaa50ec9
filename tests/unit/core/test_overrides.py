"""Command-line overrides: any TrainingArguments field under trainer.args / train.args, and
obliviate's own one-line error (exit 2) for a misspelled key instead of Hydra's "+key" advice."""

from __future__ import annotations

import json

import pytest

from obliviate.cli import main
from obliviate.errors import ConfigError
from obliviate.overrides import check_overrides, training_argument_fields

LLM = ["experiment=llm/tofu_synthetic"]


def test_training_arguments_fields_become_force_adds():
    out = check_overrides("unlearn", [*LLM, "trainer.args.max_steps=3", "trainer.args.eval_strategy=no", "train.args.max_steps=2",
                                      "trainer.args.learning_rate=1e-4", "trainer.args.lr_scheduler_kwargs.power=2"])
    # fields the YAML does not list are added (++), listed ones stay plain overrides
    assert out == [*LLM, "++trainer.args.max_steps=3", "++trainer.args.eval_strategy=no", "++train.args.max_steps=2",
                   "trainer.args.learning_rate=1e-4", "++trainer.args.lr_scheduler_kwargs.power=2"]
    assert {"max_steps", "eval_strategy", "save_strategy", "lr_scheduler_kwargs"} <= training_argument_fields()


def test_seed_001_command_line_with_config_name():
    args = ["--config-name=unlearn.yaml", "model=tiny-llama", "trainer=GradDiff", "trainer.method_args.alpha=0.5",
            "data.forget=TOFU_QA_FORGET10", "data.retain=TOFU_QA_RETAIN90", "data.eval=TOFU_QA_FORGET10_P",
            "collator=DataCollatorForSupervisedDataset", "paths.tofu=../shared/data/tofu", "trainer.args.max_steps=3"]
    assert check_overrides("unlearn", args) == [*args[:-1], "++trainer.args.max_steps=3"]


@pytest.mark.parametrize("args, message", [
    (["forget_clas=9"], "unknown config key 'forget_clas' (in 'forget_clas=9'). Did you mean: forget_class"),
    (["trainer.args.max_step=3"], "'trainer.args.max_step' is not a transformers.TrainingArguments field. Did you mean: "
                                  "trainer.args.max_steps"),
    (["train.args.num_train_epoch=3"], "Did you mean: train.args.num_train_epochs"),
    (["trainer.method_args.alpah=1"], "Did you mean: trainer.method_args.alpha"),
    (["max_steps=3"], "Did you mean: trainer.args.max_steps"),
    (["eval.tofu.max_new_tokens=3"], "no eval config is selected in this unlearn config; select one first, e.g. "
                                     "eval=<name> (lm_eval, muse, qa, tofu)"),
    (["seed.value=1"], "'seed' is not a mapping"),
    ([*LLM, "model.model_args.revison=main"], "to pass a new argument write +model.model_args.revison=..."),
])
def test_unknown_keys_name_the_close_match(args, message):
    with pytest.raises(ConfigError) as info:
        check_overrides("unlearn", args)
    assert message in str(info.value) and "\n" not in str(info.value)
    assert "use '+" not in str(info.value)  # never Hydra's append advice for a misspelling


def test_additions_group_choices_and_sweeps_pass_through():
    args = ["trainer=GA", "+new_key=1", "~divergence", "++trainer.args.max_steps=2", "hydra.job.chdir=false", "-m",
            "trainer.args.learning_rate=1e-3,1e-4"]
    assert check_overrides("unlearn", args) == args
    assert check_overrides("unlearn", ["--cfg", "job"]) == ["--cfg", "job"]


def test_misspelled_key_through_the_cli_is_one_line_exit_2(capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        main(["unlearn", "forget_clas=9", f"paths.output_dir={tmp_path / 'run'}"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == [err] and err.startswith("error: unknown config key 'forget_clas'") and "forget_class" in err
    assert "+forget_clas" not in err and not (tmp_path / "run").exists()


def test_max_steps_through_the_cli_caps_training(capsys, tmp_path):
    out = tmp_path / "run"
    main(["unlearn", *LLM, "trainer=GradDiff", "trainer.args.max_steps=2", "trainer.args.eval_strategy=no",
          f"paths.output_dir={out}", f"paths.cache_dir={tmp_path / 'cache'}", "model.config_args.num_hidden_layers=1"])
    m = json.loads((out / "metrics.json").read_text())
    steps = [h["step"] for h in m["log_history"] if "step" in h]
    assert m["status"] == "completed" and max(steps) == 2  # 5 epochs of 2 steps by default: capped at 2
    assert "max_steps: 2" in (out / "config.yaml").read_text()
