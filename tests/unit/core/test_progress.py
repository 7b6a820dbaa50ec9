"""Trainer progress: a labelled bar with the logs as postfix, or tidy lines; never printed dicts."""

import io
from contextlib import redirect_stderr, redirect_stdout

import numpy as np
import torch
from torch import nn

from obliviate.data import stack_collate
from obliviate.data.vision import TensorImageDataset
from obliviate.engine import SupervisedTrainer
from obliviate.engine.progress import format_logs, progress_label
from obliviate.models.adapters import ClassifierAdapter
from obliviate.pipelines.common import training_arguments


def _train(tmp_path, disable_tqdm: bool) -> str:
    rng = np.random.default_rng(0)
    data = TensorImageDataset(torch.tensor(rng.random((32, 1, 4, 4)), dtype=torch.float32), torch.tensor(rng.integers(0, 2, 32)))
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 2))
    args = training_arguments({"per_device_train_batch_size": 8, "num_train_epochs": 2, "logging_steps": 2, "disable_tqdm": disable_tqdm,
                               "learning_rate": 1e-2}, tmp_path / "t", 0)
    buf = io.StringIO()
    with redirect_stdout(buf), redirect_stderr(buf), progress_label("train original"):
        trainer = SupervisedTrainer(model, args, ClassifierAdapter(2), train_dataset=data, data_collator=stack_collate)
        trainer.train()
    return buf.getvalue()


def test_bar_shows_label_and_postfix_not_dicts(tmp_path):
    out = _train(tmp_path, disable_tqdm=False)
    assert "{'loss'" not in out and "'grad_norm'" not in out and "train_runtime" not in out
    assert "train original:" in out and "loss=" in out and "lr=" in out and "mean loss=" in out


def test_without_bar_one_line_per_log(tmp_path):
    out = _train(tmp_path, disable_tqdm=True)
    lines = [line for line in out.splitlines() if line.startswith("[train original]")]
    assert "{'loss'" not in out
    assert lines[0].startswith("[train original] step 2/8: loss ") and lines[-1].startswith("[train original] done, mean: loss ")
    assert len(lines) == 5  # steps 2, 4, 6, 8 and the summary


def test_format_and_nesting():
    assert format_logs({"epoch": 1.0, "grad_norm": 0.5, "learning_rate": 0.001, "forget_loss": 1.23456, "loss": 0.5}) == \
        "loss=0.5, forget_loss=1.235, grad_norm=0.5, lr=0.001"
    with progress_label("class_9"), progress_label("unlearn GA"):
        from obliviate.engine.progress import current_label

        assert current_label() == "class_9: unlearn GA"
