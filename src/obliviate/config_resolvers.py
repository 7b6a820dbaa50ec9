"""OmegaConf resolvers used by the packaged configs (registered when ``obliviate`` is imported).

``${tofu_split:${data.forget},forget10}``: the TOFU split a dataset config name implies
(``TOFU_QA_FORGET01`` -> ``forget01``), else the default -- so ``eval=tofu`` evaluates the
forget set the run unlearns unless ``forget_split=...`` is given.
``${tofu_holdout:${forget_split},holdout10}``: ``forget01`` -> ``holdout01``, else the default.
``${run_dir:outputs}``: the default run directory, ``outputs/<command>-<method>-<data>-<forget
selection>`` with a time stamp when that folder is taken (:mod:`obliviate.rundirs`).
"""

from __future__ import annotations

import re

from omegaconf import OmegaConf

_FORGET = re.compile(r"^TOFU_QA_FORGET(\d{2})(?:_[A-Z]+)?$")
_SPLIT = re.compile(r"^forget(\d{2})$")


def tofu_split(dataset: object, default: str) -> str:
    """``forgetNN`` from a ``TOFU_QA_FORGETNN[_SUFFIX]`` dataset name, else ``default``."""
    m = _FORGET.match(dataset) if isinstance(dataset, str) else None
    return f"forget{m.group(1)}" if m else default


def tofu_holdout(forget_split: object, default: str) -> str:
    """``holdoutNN`` for ``forgetNN``, else ``default``."""
    m = _SPLIT.match(forget_split) if isinstance(forget_split, str) else None
    return f"holdout{m.group(1)}" if m else default


def run_dir(parent: str = "outputs", *, _root_: object = None) -> str:
    """``PARENT/<run name>`` for this config (see :func:`obliviate.rundirs.default_run_dir`)."""
    from obliviate.rundirs import default_run_dir

    return default_run_dir(str(parent), _root_=_root_)


def register() -> None:
    for name, fn in (("tofu_split", tofu_split), ("tofu_holdout", tofu_holdout), ("run_dir", run_dir)):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)


register()
