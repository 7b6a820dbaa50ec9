"""User-facing errors.

Every error a user can cause by bad input is an :class:`ObliviateError`: its message is one
line that says what is wrong and how to fix it. The CLI prints it without a traceback and
exits with status 2 (set ``OBLIVIATE_DEBUG=1`` to see the traceback).
"""

from __future__ import annotations


class ObliviateError(Exception):
    """Base class of errors caused by the user's input or configuration."""


class ConfigError(ObliviateError):
    """A configuration value is missing, invalid, or conflicts with another."""


class DataError(ObliviateError):
    """A data file or a forget/retain selection is invalid."""


class UnknownNameError(ObliviateError, LookupError):
    """A name (method, model, dataset, metric, pruner) is not registered."""


class MissingDependencyError(ObliviateError, ImportError):
    """An optional dependency is not installed (the message names the extra to install)."""
