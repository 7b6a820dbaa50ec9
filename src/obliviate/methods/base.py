"""What every unlearning method is: a loss over a ``{"forget", "retain"}`` batch pair.

A method class declares its needs (reference model, retain data, which side anchors the
epoch) and its hyper-parameters as a dataclass ``Config`` whose field docs are the
``method_args`` documentation. One-shot methods (``model -> model``) set ``one_shot = True``
and implement :meth:`apply` instead of :meth:`loss`.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import warnings
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from obliviate.errors import ConfigError


@dataclass
class MethodContext:
    """What the engine hands to a method at every step."""

    adapter: Any
    ref_model: nn.Module | None = None
    step: int = 0
    generator: torch.Generator = field(default_factory=lambda: torch.Generator().manual_seed(0))
    extras: dict[str, Any] = field(default_factory=dict)


@dataclass
class NoArgs:
    """This method has no hyper-parameters."""


class UnlearningMethod:
    """Base of loss-object methods. Subclasses set ``Config`` and implement :meth:`loss`."""

    Config: ClassVar[type] = NoArgs
    needs_reference: ClassVar[bool] = False
    needs_retain: ClassVar[bool] = True
    needs_forget: ClassVar[bool] = True
    anchor: ClassVar[str] = "forget"  # "forget" | "retain" | "passes" (see obliviate.data.pairing)
    one_shot: ClassVar[bool] = False

    def __init__(self, config: Any | None = None) -> None:
        self.cfg = config if config is not None else self.Config()
        self.warnings: list[str] = []  # what went wrong in effect (written to metrics.json by the pipelines)

    def warn(self, message: str) -> None:
        """Report a problem loudly: a ``RuntimeWarning``, a WARNING log line, and
        ``self.warnings`` (which the pipelines write into ``metrics.json``)."""
        self.warnings.append(message)
        logging.getLogger(type(self).__module__).warning(message)
        warnings.warn(message, RuntimeWarning, stacklevel=3)

    def setup(self, model: nn.Module, ctx: MethodContext) -> None:
        """Called once before training (e.g. to cache reference outputs or build masks)."""

    def loss(self, model: nn.Module, batch: dict[str, Any], ctx: MethodContext) -> tuple[torch.Tensor, dict[str, float]]:
        """Return ``(loss, logs)`` for one batch pair."""
        raise NotImplementedError

    def before_step(self, model: nn.Module, ctx: MethodContext) -> None:
        """Called after gradients are ready, before each optimizer step (e.g. to mask gradients)."""

    def after_step(self, model: nn.Module, ctx: MethodContext) -> None:
        """Called after every optimizer step (e.g. to restore masked weights exactly)."""


def make_config(config_cls: type, method_args: dict[str, Any] | None, method_name: str) -> Any:
    """Instantiate a method's config dataclass, rejecting unknown keys with close matches."""
    method_args = dict(method_args or {})
    names = [f.name for f in dataclasses.fields(config_cls)]
    for key in method_args:
        if key not in names:
            close = difflib.get_close_matches(key, names, n=3)
            hint = f" Did you mean: {', '.join(close)}?" if close else ""
            raise ConfigError(
                f"method {method_name} has no argument '{key}'.{hint} Its arguments: {', '.join(names) or 'none'}"
            )
    return config_cls(**method_args)
