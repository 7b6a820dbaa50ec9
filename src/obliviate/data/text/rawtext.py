"""Rows of MUSE / WMDP-style data sets: hub subsets or local files in the hub's layout.

Two ways to name the data, as in the reference framework's ``hf_args``:

- ``{path, name, split}``: a hub id (``muse-bench/MUSE-News``, loaded with
  ``datasets.load_dataset(path, name, split=split)``) or a **local directory in the same
  layout**. Locally, ``<path>/<name>/<split>`` is looked up as, in this order:
  ``<split>.json`` (a JSON array, muse_bench's ``load_data.py`` layout: strings or objects),
  ``<split>.jsonl`` (JSON Lines), ``<split>-*.parquet`` / ``<split>.parquet`` (the hub's
  files), and ``<path>/<name>.jsonl`` / ``.json`` / ``.parquet`` when ``split`` is ``train``
  (e.g. ``wmdp-corpora/cyber-forget-corpus.jsonl``). ``split: forget+retain1`` joins splits
  in order (the ``datasets`` split syntax).
- ``{data_files, path: text|json|parquet}``: one file or a glob (the reference's WMDP corpora:
  ``path: text, data_files: data/wmdp/wmdp-corpora/cyber-forget-corpus.jsonl``).

A row that is a plain string becomes ``{"text": string}``. In a ``.jsonl`` file each line
is a JSON object (the row), a JSON string (its text), or, if it is not JSON, the raw line
(``path: text``: one row per non-empty line). The reference's ``text`` builder keeps a
JSON line verbatim, so a ``{"text": ...}`` line would train on its braces and quotes; here it
trains on the ``text`` field.
"""

from __future__ import annotations

import difflib
import glob
import json
from pathlib import Path
from typing import Any

from obliviate.errors import ConfigError, DataError

#: Required fields per MUSE subset (hub config name), for the error messages.
MUSE_SCHEMAS: dict[str, dict[str, type]] = {
    "raw": {"text": str},
    "scal": {"text": str},
    "sust": {"text": str},
    "train": {"text": str},
    "privleak": {"text": str},
    "verbmem": {"prompt": str, "gt": str},
    "knowmem": {"question": str, "answer": str},
}


def _rows_from_json(value: Any, source: str) -> list[dict[str, Any]]:
    if isinstance(value, dict) and len(value) == 1 and isinstance(next(iter(value.values())), list):
        value = next(iter(value.values()))  # {"data": [...]}
    if not isinstance(value, list):
        raise DataError(f"{source} holds a JSON {type(value).__name__}; expected an array of strings or objects")
    rows = []
    for i, item in enumerate(value, 1):
        if isinstance(item, str):
            rows.append({"text": item})
        elif isinstance(item, dict):
            rows.append(dict(item))
        else:
            raise DataError(f"{source}: item {i} is a JSON {type(item).__name__}; expected a string or an object")
    return rows


def _read_lines(path: Path, raw_lines: bool) -> list[dict[str, Any]]:
    rows = []
    text = _utf8(path)
    for line in text.split("\n"):
        if not line.strip():
            continue
        if raw_lines and path.suffix not in (".jsonl", ".json"):
            rows.append({"text": line})
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError:
            value = line
        if isinstance(value, dict):
            rows.append(value)
        elif isinstance(value, str):
            rows.append({"text": value})
        else:
            rows.append({"text": line})
    return rows


def _utf8(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path} is not UTF-8 text (bad byte at offset {exc.start})") from None


def read_rows_file(path: str | Path, *, raw_lines: bool = False) -> list[dict[str, Any]]:
    """Rows of one local file (``.json`` array or JSON Lines, ``.jsonl``, ``.parquet``, ``.txt``).

    Args:
        path: The file.
        raw_lines: Every non-empty line of a ``.txt`` file is a row (``path: text``).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file '{path}' does not exist")
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            return [dict(r) for r in pq.read_table(path).to_pylist()]
        except Exception as exc:  # noqa: BLE001  (a corrupt file: one clear line)
            raise DataError(f"{path} is not a readable parquet file ({type(exc).__name__}: {exc})") from None
    if path.suffix == ".json":
        text = _utf8(path)
        try:
            return _rows_from_json(json.loads(text), str(path))
        except json.JSONDecodeError:
            return _read_lines(path, raw_lines)  # JSON Lines saved as .json (TOFU's files)
    return _read_lines(path, raw_lines or path.suffix == ".txt")


def _split_files(root: Path, name: str, split: str) -> list[Path]:
    sub = root / name if name else root
    for pattern in (f"{split}.json", f"{split}.jsonl", f"{split}-*.parquet", f"{split}.parquet"):
        found = sorted(sub.glob(pattern))
        if found:
            return found
    if split == "train" and name:
        for ext in (".jsonl", ".json", ".parquet"):
            if (root / f"{name}{ext}").is_file():
                return [root / f"{name}{ext}"]
    return []


def _missing(root: Path, name: str, split: str) -> DataError:
    sub = root / name if name else root
    if not sub.is_dir():
        have = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
        close = difflib.get_close_matches(name, have, n=3)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        return DataError(f"'{sub}' does not exist (subset '{name}').{hint} Subsets there: {', '.join(have) or 'none'}")
    have = sorted({p.name.split("-00")[0].rsplit(".", 1)[0] for p in sub.iterdir() if p.is_file()})
    close = difflib.get_close_matches(split, have, n=3)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    return DataError(f"no file for split '{split}' in '{sub}' (looked for {split}.json, {split}.jsonl, {split}-*.parquet).{hint} "
                     f"Splits there: {', '.join(have) or 'none'}")


def is_local(path: str) -> bool:
    """Whether ``path`` names a local directory/file (exists, or looks like a path)."""
    return Path(str(path)).expanduser().exists() or str(path).startswith((".", "/", "~"))


def load_rows(hf_args: dict[str, Any], required: dict[str, type] | None = None, *, what: str = "data") -> tuple[list[dict[str, Any]], str]:
    """Rows named by a reference-style ``hf_args`` block (see the module docstring).

    Args:
        hf_args: ``{path, name, split}`` or ``{data_files, path}``.
        required: Fields every row must have (checked with the row number in the error).
        what: Name used in error messages (the dataset config name).

    Returns:
        ``(rows, source)``; ``source`` names the file(s) or hub subset read.

    Raises:
        DataError: a missing file/split (with the ones that exist), bad JSON, a missing field.
    """
    hf = dict(hf_args or {})
    if hf.get("data_files") is not None:
        files_spec = hf["data_files"]
        if isinstance(files_spec, dict):  # {split: files}
            files_spec = files_spec.get(hf.get("split", "train")) or next(iter(files_spec.values()))
        patterns = [files_spec] if isinstance(files_spec, str) else list(files_spec)
        files: list[Path] = []
        for pattern in patterns:
            hits = sorted(glob.glob(str(Path(pattern).expanduser())))
            if not hits:
                raise DataError(f"{what}: data file '{pattern}' does not exist; pass paths.wmdp=DIR (or the file's path) "
                                "with the corpora in the reference layout (DIR/wmdp-corpora/<name>.jsonl)")
            files += [Path(h) for h in hits]
        rows = [r for f in files for r in read_rows_file(f, raw_lines=hf.get("path") == "text")]
        source = ", ".join(str(f) for f in files)
    else:
        if "path" not in hf:
            raise ConfigError(f"{what}: hf_args needs 'path' (hub id or local directory) or 'data_files'")
        path, name, split = str(hf["path"]), str(hf.get("name") or ""), str(hf.get("split", "train"))
        local = Path(path).expanduser()
        if local.is_dir():
            rows, used = [], []
            for part in split.split("+"):
                files = _split_files(local, name, part.strip())
                if not files:
                    raise _missing(local, name, part.strip())
                used += files
                rows += [r for f in files for r in read_rows_file(f)]
            source = ", ".join(str(f) for f in used)
        elif is_local(path):
            raise DataError(f"{what}: data directory '{path}' does not exist; pass paths.muse=DIR / paths.wmdp=DIR "
                            "(a folder in the hub's layout) or a hub id")
        else:
            rows = _hub_rows(path, name or None, split, what)
            source = f"{path}:{name}:{split}"
    if not rows:
        raise DataError(f"{what}: {source} holds no rows")
    for i, row in enumerate(rows, 1):
        for key, kind in (required or {}).items():
            if key not in row:
                have = ", ".join(sorted(map(str, row))) or "none"
                raise DataError(f"{what}: {source}: row {i} has no field '{key}' (it has: {have})")
            if not isinstance(row[key], kind):
                raise DataError(f"{what}: {source}: row {i} field '{key}' must be a {kind.__name__}, got {type(row[key]).__name__}")
    return rows, source


def _hub_rows(path: str, name: str | None, split: str, what: str) -> list[dict[str, Any]]:
    import datasets

    try:
        ds = datasets.load_dataset(path, name, split=split)
    except Exception as exc:  # noqa: BLE001  (offline, unknown subset, network: one DataError)
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"{what}: could not load '{path}' subset '{name}' split '{split}' from the Hugging Face hub ({first}); "
                        "pass a local directory in the hub's layout (paths.muse=DIR / paths.wmdp=DIR)") from None
    return [dict(r) for r in ds]
