"""TOFU QA files: loading (hub or local JSON Lines), schema validation, dataset configs.

A dataset config (``configs/data/datasets/<NAME>.yaml``) has the reference framework's
layout::

    TOFU_QA_FORGET10:
      handler: QADataset
      args:
        hf_args: {path: ${paths.tofu}, name: forget10, split: train}
        question_key: question
        answer_key: answer
        max_length: 512

``hf_args.path`` is a hub id (``locuslab/TOFU``, loaded with ``datasets.load_dataset(path,
name, split=split)``) or a local directory holding ``<name>.json`` JSON Lines files (the
hub's layout). ``paths.tofu=DIR`` points every TOFU config at a local copy.
"""

from __future__ import annotations

import difflib
import json
import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from obliviate.errors import ConfigError, DataError, UnknownNameError

log = logging.getLogger(__name__)

TOFU_HUB_ID = "locuslab/TOFU"
DATASET_CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs" / "data" / "datasets"

_QA = {"question": str, "answer": str}
_PERTURBED = {**_QA, "paraphrased_answer": str, "perturbed_answer": list}
_OPTIONS = {**_QA, "option1": str, "option2": str, "option3": str, "option4": str}
#: Required fields (and their types) of each TOFU file, by file stem.
TOFU_SCHEMAS: dict[str, dict[str, type]] = {
    "full": _QA,
    **{f"forget{p}": _QA for p in ("01", "05", "10")},
    **{f"retain{p}": _QA for p in ("90", "95", "99")},
    **{f"holdout{p}": _QA for p in ("01", "05", "10")},
    **{f"forget{p}_perturbed": _PERTURBED for p in ("01", "05", "10")},
    "retain_perturbed": _PERTURBED,
    "real_authors": _OPTIONS,
    "world_facts": _OPTIONS,
    "real_authors_perturbed": {**_QA, "perturbed_answer": list},
    "world_facts_perturbed": {**_QA, "perturbed_answer": list},
}
IDK_FILE = "idontknow.jsonl"


# ----------------------------------------------------------------------------- reading + validation
def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Read a JSON Lines file; a bad line raises :class:`DataError` naming file and line."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file '{path}' does not exist")
    rows = []
    for lineno, line in enumerate(_utf8_text(path).split("\n"), 1):  # not splitlines(): U+2028 may sit inside a JSON string
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: line {lineno} is not valid JSON ({exc.msg}); expected one JSON object per line") from None
        if not isinstance(row, dict):
            raise DataError(f"{path}: line {lineno} is a JSON {type(row).__name__}, expected an object with fields")
        rows.append(row)
    return rows


def read_text_lines(path: str | Path) -> list[str]:
    """Non-empty stripped lines of a text file (e.g. ``idontknow.jsonl``: plain refusal answers)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file '{path}' does not exist")
    return [line.strip() for line in _utf8_text(path).splitlines() if line.strip()]


def _utf8_text(path: Path) -> str:
    """The file's text; a non-UTF-8 file raises :class:`DataError` naming the byte offset."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path} is not UTF-8 text (bad byte at offset {exc.start}); save it as UTF-8 JSON Lines") from None


def field_names(row: dict[str, Any]) -> str:
    """The row's field names on one line (escaped), for error messages."""
    return ", ".join(str(k).encode("unicode_escape").decode() for k in sorted(row)) or "none"


def validate_rows(rows: list[dict[str, Any]], fields: dict[str, type], source: str) -> None:
    """Check that every row has ``fields`` with the right types.

    Raises:
        DataError: naming ``source``, the 1-based row number and the missing/invalid field.
    """
    if not rows:
        raise DataError(f"{source} holds no rows")
    for i, row in enumerate(rows, 1):
        for name, kind in fields.items():
            if name not in row:
                raise DataError(f"{source}: row {i} has no field '{name}' (it has: {field_names(row)})")
            value = row[name]
            if kind is list:
                if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
                    raise DataError(f"{source}: row {i} field '{name}' must be a non-empty list of strings, got {type(value).__name__}")
            elif not isinstance(value, kind):
                raise DataError(f"{source}: row {i} field '{name}' must be a {kind.__name__}, got {type(value).__name__}")


def load_qa_rows(path: str, name: str, split: str = "train", required: dict[str, type] | None = None) -> list[dict[str, Any]]:
    """Rows of one TOFU subset from a local directory (``<path>/<name>.json``) or the hub.

    Args:
        path: Local directory or hub dataset id.
        name: Subset / file stem (``forget10``, ``retain90``, ...).
        split: Hub split (``train``; local files have one split).
        required: Fields to check besides the known TOFU schema of ``name``.

    Raises:
        DataError: missing file, bad JSON, missing field, or a hub dataset that cannot be loaded.
    """
    fields = {**TOFU_SCHEMAS.get(name, {}), **(required or {})}
    local = Path(str(path)).expanduser()
    if local.is_dir():
        file = next((local / f"{name}{ext}" for ext in (".json", ".jsonl") if (local / f"{name}{ext}").is_file()), None)
        if file is None and (local / name).is_dir():  # MUSE's layout: <path>/<subset>/<split>.json|-*.parquet (knowmem QA)
            from obliviate.data.text.rawtext import load_rows

            return load_rows({"path": str(local), "name": name, "split": split}, fields, what=f"{local}/{name}")[0]
        if file is None:
            have = sorted(p.stem for p in local.glob("*.json"))
            close = difflib.get_close_matches(name, have, n=3)
            hint = f" Did you mean: {', '.join(close)}?" if close else ""
            raise DataError(f"'{local}/{name}.json' does not exist.{hint} Files there: {', '.join(have) or 'none'}")
        rows = read_jsonl(file)
        validate_rows(rows, fields, str(file))
        return rows
    if str(path).startswith((".", "/", "~")):
        raise DataError(f"data directory '{path}' does not exist; pass paths.tofu=DIR (a folder of <split>.json files) or a hub id")
    rows = _load_hub_rows(str(path), name, split)
    validate_rows(rows, fields, f"{path}:{name}")
    return rows


def _load_hub_rows(path: str, name: str, split: str) -> list[dict[str, Any]]:
    import datasets

    try:
        ds = datasets.load_dataset(path, name, split=split)
    except Exception as exc:  # noqa: BLE001  (offline, unknown subset, network: all become one DataError)
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"could not load '{path}' subset '{name}' from the Hugging Face hub ({first}); "
                        "pass paths.tofu=DIR with local <subset>.json files") from None
    return [dict(r) for r in ds]


def load_idk_answers(path: str | Path | None) -> list[str]:
    """Refusal answers from ``idontknow.jsonl`` (plain text lines); built-in ones if ``path`` is absent."""
    if path is not None:
        p = Path(str(path)).expanduser()
        if p.is_dir():
            p = p / IDK_FILE
        if p.is_file():
            answers = read_text_lines(p)
            if not answers:
                raise DataError(f"{p} holds no answers")
            return answers
        if str(path).startswith((".", "/", "~")):
            raise DataError(f"IDK answers file '{p}' does not exist")
    from obliviate.data.text.synthetic import IDK_ANSWERS

    log.info("no local %s: using the %d built-in refusal answers", IDK_FILE, len(IDK_ANSWERS))
    return list(IDK_ANSWERS)


# ----------------------------------------------------------------------------- dataset configs
def _container(node: DictConfig) -> Any:
    """An inline dataset block as plain data: resolved in its config (``${forget_split}``,
    ``${paths.muse}`` of an experiment), or unresolved when it is detached from one."""
    try:
        return OmegaConf.to_container(node, resolve=True)
    except OmegaConfBaseException:
        return OmegaConf.to_container(node, resolve=False)


def available_datasets() -> list[str]:
    """Names of the packaged dataset configs."""
    return sorted(p.stem for p in DATASET_CONFIG_DIR.glob("*.yaml"))


def resolve_dataset_spec(value: str | dict | DictConfig, paths: dict | DictConfig | None = None) -> tuple[str, dict[str, Any]]:
    """Turn ``data.forget``-style values into ``(name, {"handler", "args"})``.

    Args:
        value: A packaged dataset config name (``TOFU_QA_FORGET10``), a path to such a YAML
            file, or an inline config (``{NAME: {handler, args}}`` or ``{handler, args}``).
        paths: The run's ``paths`` block, for ``${paths.tofu}`` interpolations.

    Raises:
        UnknownNameError: an unknown dataset name (with close names).
        ConfigError: a config without ``handler``/``args`` or with an unresolvable value.
    """
    if isinstance(value, str):
        file = Path(value).expanduser()
        if not (value.endswith((".yaml", ".yml")) and file.is_file()):
            file = DATASET_CONFIG_DIR / f"{value}.yaml"
            if not file.is_file():
                names = available_datasets()
                close = difflib.get_close_matches(value, names, n=3, cutoff=0.5)
                hint = f" Did you mean: {', '.join(close)}?" if close else ""
                raise UnknownNameError(f"unknown dataset '{value}'.{hint} Packaged datasets: {', '.join(names)}")
        node: Any = OmegaConf.load(file)
    else:
        node = OmegaConf.create(_container(value) if isinstance(value, DictConfig) else value)
    root = OmegaConf.merge(OmegaConf.create({"paths": paths or {}}), {"_ds": node})
    try:
        spec = OmegaConf.to_container(root, resolve=True)["_ds"]
    except OmegaConfBaseException as exc:
        raise ConfigError(f"dataset config '{value if isinstance(value, str) else '<inline>'}' could not be resolved: {exc.msg if hasattr(exc, 'msg') else exc}") from None
    name = value if isinstance(value, str) else "inline"
    if isinstance(spec, dict) and "handler" not in spec and len(spec) == 1:
        name, spec = next(iter(spec.items()))
    if not isinstance(spec, dict) or "handler" not in spec:
        raise ConfigError(f"dataset config '{name}' needs 'handler' and 'args' keys (see configs/data/datasets/TOFU_QA_FORGET10.yaml)")
    spec.setdefault("args", {})
    return str(name), spec
