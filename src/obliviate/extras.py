"""Optional dependencies: one clear line naming the extra to install when one is missing.

obliviate's core needs only its base requirements; plots, sweeps, ROUGE, GGUF models and
loggers come with extras (``pyproject.toml``). :func:`require` imports such a module or
raises :class:`~obliviate.errors.MissingDependencyError` ("... needs matplotlib, which is not
installed: pip install 'obliviate[report]'"), which the CLI prints as one line, exit status 2.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from obliviate.errors import MissingDependencyError

#: import name -> (pip extra, what needs it)
OPTIONAL: dict[str, tuple[str, str]] = {
    "matplotlib": ("report", "the plots of `obliviate report`"),
    "optuna": ("report", "`obliviate sweep`"),
    "tensorboard": ("report", "trainer.args.report_to=tensorboard"),
    "rouge_score": ("llm", "ROUGE in the TOFU evaluation"),
    "gguf": ("llm", "GGUF models (e.g. model=SmolLM2-135M-Instruct)"),
    "wandb": ("wandb", "trainer.args.report_to=wandb"),
}
PIP_NAMES = {"rouge_score": "rouge-score"}


def install_hint(module: str) -> str | None:
    """``pip install 'obliviate[<extra>]'`` for a known optional module (``None`` otherwise)."""
    entry = OPTIONAL.get(module.split(".")[0])
    return None if entry is None else f"pip install 'obliviate[{entry[0]}]'"


def missing_message(module: str, purpose: str | None = None) -> str:
    """The one-line message for a missing optional ``module``."""
    top = module.split(".")[0]
    _, default_purpose = OPTIONAL.get(top, (None, None))
    what = purpose or default_purpose or "this command"
    fix = install_hint(top) or f"pip install {top}"
    return f"{what} needs the '{PIP_NAMES.get(top, top)}' package, which is not installed: {fix}"


def require(module: str, purpose: str | None = None) -> ModuleType:
    """Import ``module`` or raise :class:`MissingDependencyError` naming the extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        if exc.name is not None and exc.name.split(".")[0] != module.split(".")[0]:
            raise  # the module exists but one of *its* imports failed: not ours to rename
        raise MissingDependencyError(missing_message(module, purpose)) from None


def as_missing_dependency(exc: BaseException) -> MissingDependencyError | None:
    """The one-line error for an ``ImportError`` of a known optional module (else ``None``)."""
    name = getattr(exc, "name", None)
    if isinstance(exc, ImportError) and name and name.split(".")[0] in OPTIONAL:
        return MissingDependencyError(missing_message(name))
    return None
