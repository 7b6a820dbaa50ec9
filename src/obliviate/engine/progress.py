"""Tidy training progress: one labelled bar per training, logged values as its postfix.

The HF Trainer prints every log as a raw dict (``{'loss': '0.01294', 'grad_norm': ...}``)
below its progress bar. :func:`tidy_progress` replaces its progress callbacks on a Trainer:

- with a progress bar (the default): the bar is labelled by the current
  :func:`progress_label` (``train original``, ``unlearn GA``, ``IMP round 2/3: retrain``) and
  the latest logged values appear as its postfix (``loss=0.0129, forget_loss=1.85, lr=1e-3``);
  the end-of-training summary shows the run means (``mean loss=...``);
- with ``disable_tqdm=true``: one plain line per log (``[unlearn GA] step 20/60: loss 0.45, ...``).

It also adds :class:`InterruptCheck`, which ends training at the next step when a Ctrl-C or
SIGTERM arrived while Python could not raise it (see :mod:`obliviate.console`).
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from transformers import PrinterCallback, ProgressCallback, TrainerCallback

_LABEL: contextvars.ContextVar[str | None] = contextvars.ContextVar("obliviate_progress_label", default=None)
# Log keys that are bookkeeping (shown by the bar itself) or too long for a postfix.
_HIDDEN_KEYS = {"epoch", "step", "total_flos", "train_runtime", "train_samples_per_second", "train_steps_per_second"}
_SHORT = {"learning_rate": "lr", "grad_norm": "grad_norm", "train_loss": "loss"}


@contextmanager
def progress_label(text: str) -> Iterator[None]:
    """Label the progress bars of the trainings run inside this block (nested labels are joined:
    ``class_9: unlearn GA``)."""
    outer = _LABEL.get()
    token = _LABEL.set(f"{outer}: {text}" if outer else text)
    try:
        yield
    finally:
        _LABEL.reset(token)


def current_label() -> str | None:
    """The label set by the innermost :func:`progress_label` (``None`` outside one)."""
    return _LABEL.get()


def _value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def format_logs(logs: dict[str, Any], sep: str = "=") -> str:
    """``loss=0.45, forget_loss=1.2, lr=0.001``: the loss first, bookkeeping keys left out."""
    keys = [k for k in logs if k not in _HIDDEN_KEYS and not isinstance(logs[k], (dict, list))]
    keys.sort(key=lambda k: (k not in ("loss", "train_loss"), k in ("grad_norm", "learning_rate")))
    return ", ".join(f"{_SHORT.get(k, k)}{sep}{_value(logs[k])}" for k in keys)


def _is_summary(logs: dict[str, Any]) -> bool:
    return "train_runtime" in logs


class TidyProgressCallback(ProgressCallback):
    """A labelled progress bar whose postfix shows the latest logged values (never raw dicts).

    Args:
        default_label: The bar's label outside any :func:`progress_label` block.
    """

    def __init__(self, default_label: str | None = None) -> None:
        super().__init__()
        self.default_label = default_label

    def on_train_begin(self, args, state, control, **kwargs):
        super().on_train_begin(args, state, control, **kwargs)
        if self.training_bar is not None:
            label = current_label() or self.default_label
            if label:
                self.training_bar.set_description(label, refresh=False)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or self.training_bar is None or not logs:
            return
        text = format_logs(logs)
        if text:
            self.training_bar.set_postfix_str(("mean " + text) if _is_summary(logs) else text, refresh=True)


class TidyPrinterCallback(TrainerCallback):
    """``disable_tqdm=true``: one plain line per log instead of a dict."""

    def __init__(self, default_label: str | None = None) -> None:
        self.default_label = default_label

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        label = current_label() or self.default_label
        where = "done, mean" if _is_summary(logs) else f"step {state.global_step}/{state.max_steps}"
        text = format_logs(logs, sep=" ")
        if text:
            print(f"{f'[{label}] ' if label else ''}{where}: {text}", flush=True)


class InterruptCheck(TrainerCallback):
    """Raise the Ctrl-C / SIGTERM that arrived where Python swallows exceptions (a ``__del__``)."""

    def on_step_end(self, args, state, control, **kwargs):
        from obliviate.console import raise_if_interrupted

        raise_if_interrupted()

    on_substep_end = on_step_end


def tidy_progress(trainer: Any, default_label: str | None = None) -> None:
    """Swap a Trainer's default progress/printer callbacks for the tidy ones (in place).

    Args:
        trainer: A ``transformers.Trainer``.
        default_label: The bar's label outside any :func:`progress_label` block.
    """
    handler = trainer.callback_handler
    replaced = False
    for cb in list(handler.callbacks):
        if type(cb) in (ProgressCallback, PrinterCallback):
            handler.remove_callback(cb)
            replaced = True
    if replaced:
        trainer.add_callback((TidyPrinterCallback if trainer.args.disable_tqdm else TidyProgressCallback)(default_label))
    trainer.add_callback(InterruptCheck())
