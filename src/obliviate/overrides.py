"""Command-line overrides checked before Hydra sees them.

Two things Hydra's struct mode gets wrong for obliviate's users:

- ``trainer.args`` / ``train.args`` are ``transformers.TrainingArguments``: any field of it
  may be set as ``trainer.args.max_steps=3`` (the reference framework's vocabulary), not
  only the fields the YAML happens to list. Such an override becomes ``++trainer.args.…``
  (add or replace); a name that is not a field fails here, naming the close matches.
- A misspelled key (``forget_clas=9``) makes Hydra advise ``+forget_clas=9``, which would
  silently add a key nothing reads. Here it fails in one line with obliviate's own error,
  naming the close match.

The check composes the command's config with the group choices and additions of the command
line (``model=…``, ``experiment=…``, ``+key=…``), then looks up every plain ``key=value``.
"""

from __future__ import annotations

import dataclasses
import difflib
from functools import lru_cache
from pathlib import Path
from typing import Any

from obliviate.errors import ConfigError

CONFIG_DIR = Path(__file__).parent / "configs"
#: Config nodes whose keys are ``transformers.TrainingArguments`` fields.
TRAINING_ARGS_NODES = ("trainer.args", "train.args")
#: Config nodes that are keyword arguments of another library call: a new key is legitimate there.
KWARGS_NODES = ("model_args", "tokenizer_args", "config_args", "hf_args", "collator_args", "generation_args")


@lru_cache(maxsize=1)
def training_argument_fields() -> frozenset[str]:
    """Names of the ``transformers.TrainingArguments`` fields a config may set."""
    from transformers import TrainingArguments

    return frozenset(f.name for f in dataclasses.fields(TrainingArguments) if f.init)


def _is_group(key: str) -> bool:
    return "." not in key and (CONFIG_DIR / key).is_dir()


def _children(node: Any) -> list[str] | None:
    from omegaconf import DictConfig

    if isinstance(node, DictConfig) and not node._is_none() and not node._is_missing():
        return [str(k) for k in node.keys()]
    return None


def _child(node: Any, key: str) -> Any:
    return node._get_node(key)


def _leaf_paths(node: Any, prefix: str = "", depth: int = 4) -> list[str]:
    keys = _children(node)
    if keys is None or depth == 0:
        return []
    out = []
    for k in keys:
        path = f"{prefix}{k}"
        out.append(path)
        out += _leaf_paths(_child(node, k), f"{path}.", depth - 1)
    return out


def _hint(options: list[str]) -> str:
    return f" Did you mean: {', '.join(options)}?" if options else ""


def _check_key(cfg: Any, key: str, text: str, command: str) -> bool:
    """Check ``key`` against the composed ``cfg``; returns whether it must be force-added (``++``).

    Raises:
        ConfigError: the key does not exist and may not be added.
    """
    from omegaconf import ListConfig

    parts = key.split(".")
    node, walked = cfg, []
    for i, part in enumerate(parts):
        parent = ".".join(walked)
        if isinstance(node, ListConfig):
            return False  # list items: Hydra checks the index itself
        keys = _children(node)
        if keys is None:  # a null / non-dict node on the way
            group = parts[0] if _is_group(parts[0]) and i == 1 else None
            fix = f"; select one first, e.g. {group}=<name> ({', '.join(_group_options(group)[:4])})" if group else ""
            what = "null" if node is None or node._is_none() else "not a mapping"
            raise ConfigError(f"cannot set '{text}': '{parent}' is {what} in this {command} config{fix}")
        if part in keys:
            node, walked = _child(node, part), [*walked, part]
            continue
        if i == 0 and _is_group(part) and len(parts) > 1:
            raise ConfigError(f"cannot set '{text}': no {part} config is selected in this {command} config; "
                              f"select one first, e.g. {part}=<name> ({', '.join(_group_options(part)[:6])})")
        if parent in TRAINING_ARGS_NODES:
            fields = training_argument_fields()
            if part in fields:
                return True  # also a key inside a dict-valued field (lr_scheduler_kwargs.x)
            close = difflib.get_close_matches(part, sorted(fields), n=3, cutoff=0.6)
            hint = _hint([f"{parent}.{c}" for c in close])
            raise ConfigError(f"'{parent}.{part}' is not a transformers.TrainingArguments field.{hint}")
        if walked and walked[-1] in KWARGS_NODES:
            raise ConfigError(f"'{parent}' has no key '{part}' (in '{text}'); to pass a new argument write +{key}=...")
        close = [f"{parent}.{c}" if parent else c for c in difflib.get_close_matches(part, keys, n=3, cutoff=0.6)]
        if not close:  # the same name deeper in the config (max_steps=3 -> trainer.args.max_steps)
            close = [p for p in _leaf_paths(cfg) if p.rsplit(".", 1)[-1] == part][:3]
        if not close and not parent and part in training_argument_fields():
            close = [f"{n}.{part}" for n in TRAINING_ARGS_NODES if _has_path(cfg, n)][:1]
        where = f" under '{parent}'" if parent else ""
        raise ConfigError(f"unknown config key '{key}'{where} (in '{text}').{_hint(close)} "
                          f"'obliviate {command} --cfg job' prints every key")
    return False


def _has_path(cfg: Any, dotted: str) -> bool:
    node = cfg
    for part in dotted.split("."):
        keys = _children(node)
        if keys is None or part not in keys:
            return False
        node = _child(node, part)
    return True


def _group_options(group: str | None) -> list[str]:
    if not group:
        return []
    return sorted(str(p.relative_to(CONFIG_DIR / group).with_suffix("")) for p in (CONFIG_DIR / group).rglob("*.yaml"))


def check_overrides(command: str, args: list[str]) -> list[str]:
    """Validate the ``key=value`` overrides of ``args`` against the command's composed config.

    Args:
        command: The Hydra command (its config is ``configs/<command>.yaml`` unless
            ``--config-name`` says otherwise).
        args: The command line after the command name.

    Returns:
        ``args`` with ``trainer.args.<field>=v`` / ``train.args.<field>=v`` for a
        ``TrainingArguments`` field the config does not list rewritten as ``++…`` (add or
        replace); everything else unchanged.

    Raises:
        ConfigError: an unknown key (close matches named) or an unknown TrainingArguments field.
    """
    from hydra._internal.utils import get_args_parser
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import OverrideType
    from hydra.errors import HydraException

    try:
        ns, _ = get_args_parser().parse_known_args(args)
    except SystemExit:
        return args
    if ns.config_path or ns.config_dir or not ns.overrides:
        return args  # a user config tree: Hydra checks it
    config_name = str(ns.config_name or command).removesuffix(".yaml")
    try:
        parsed = OverridesParser.create().parse_overrides(list(ns.overrides))
    except HydraException:
        return args  # a syntax error: Hydra's message says where
    compose_with, to_check = [], []
    for text, ov in zip(ns.overrides, parsed):
        key = ov.key_or_group
        if key.startswith("hydra") or ov.package is not None:
            continue
        if ov.is_sweep_override() and _is_group(key):
            return args  # several configs to compose (-m): Hydra checks each
        if _is_group(key) or ov.type != OverrideType.CHANGE:
            compose_with.append(text)
        else:
            to_check.append((text, key))
    if not to_check:
        return args
    cfg = _compose(config_name, compose_with)
    if cfg is None:
        return args
    forced = {text for text, key in to_check if _check_key(cfg, key, text, command)}
    return [f"++{a}" if a in forced else a for a in args]


def _compose(config_name: str, overrides: list[str]) -> Any:
    """The packaged config ``config_name`` with ``overrides`` (``None`` if Hydra cannot compose it)."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    import obliviate.config_resolvers  # noqa: F401  (resolvers of the packaged configs)

    GlobalHydra.instance().clear()  # a previous in-process command's Hydra (tests, notebooks)
    try:
        with initialize_config_module("obliviate.configs", version_base="1.3"):
            return compose(config_name=config_name, overrides=overrides)
    except Exception:  # noqa: BLE001 - Hydra reports composition errors itself, with context
        return None
