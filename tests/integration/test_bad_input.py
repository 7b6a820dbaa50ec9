"""Every bad input gives one clear line on stderr, a non-zero exit, and writes no results."""

import json

import pytest

from obliviate.cli import main


def _fails(capsys, args, tmp_path, message):
    with pytest.raises(SystemExit) as exit_info:
        main([*args, f"paths.output_dir={tmp_path / 'run'}", "train.args.num_train_epochs=1"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err, err
    assert "Traceback" not in err and len(err.splitlines()) == 1
    assert not (tmp_path / "run" / "metrics.json").exists()
    return err


@pytest.mark.parametrize("args, message", [
    (["unlearn", "trainer=GAA"], "unknown trainer 'GAA'. Did you mean: GA"),
    (["unlearn", "model=digit_cnn"], "unknown model 'digit_cnn'. Did you mean: digits_cnn"),
    (["unlearn", "data=cifar"], "unknown data 'cifar'. Did you mean: cifar10"),
    (["unlearn", "trainer.handler=GradDif"], "unknown method 'GradDif'. Did you mean: GradDiff"),
    (["unlearn", "forget_class=42"], "forget_class=42 does not occur in the training data"),
    (["unlearn", "forget_class=1", "forget_count=3"], "choose exactly one forget selection"),
    (["unlearn", "original_checkpoint=/no/such/model.safetensors", "forget_class=1"], "checkpoint '/no/such/model.safetensors' does not exist"),
    (["unlearn", "experiment=vision/cifar10", "paths.cifar10=/no/such/dir", "forget_class=1"], "is not a directory"),
    (["unlearn", "forget_class=1", "trainer.args.learning_rte=1"],
     "'trainer.args.learning_rte' is not a transformers.TrainingArguments field. Did you mean: trainer.args.learning_rate"),
    (["unlearn", "forget_clas=1"], "unknown config key 'forget_clas' (in 'forget_clas=1'). Did you mean: forget_class"),
])
def test_bad_input_messages(capsys, tmp_path, args, message):
    _fails(capsys, args, tmp_path, message)


def test_index_file_errors(capsys, tmp_path):
    empty = tmp_path / "empty.json"
    empty.write_text("[]")
    _fails(capsys, ["unlearn", f"forget_index_file={empty}"], tmp_path, "is empty")
    oob = tmp_path / "oob.json"
    oob.write_text("[0, 99999]")
    _fails(capsys, ["unlearn", f"forget_index_file={oob}"], tmp_path, "index 99999 out of range")
    _fails(capsys, ["unlearn", f"forget_index_file={tmp_path / 'nope.json'}"], tmp_path, "does not exist")


def test_unknown_method_argument(capsys, tmp_path):
    _fails(capsys, ["unlearn", "forget_class=1", "+trainer.method_args.alpah=2"], tmp_path, "method GradDiff has no argument 'alpah'. Did you mean: alpha")


def test_completed_run_is_not_overwritten(capsys, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "manifest.json").write_text(json.dumps({"status": "completed"}))
    (run / "metrics.json").write_text("{}")
    with pytest.raises(SystemExit):
        main(["unlearn", "forget_class=1", f"paths.output_dir={run}"])
    assert "already holds a completed unlearn run" in capsys.readouterr().err
    assert (run / "metrics.json").read_text() == "{}"
