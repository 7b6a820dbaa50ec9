"""How a command ends on the console.

- A user error (:class:`~obliviate.errors.ObliviateError`, including a missing optional
  dependency) prints one line ``error: ...`` and exits with status 2.
- Ctrl-C or SIGTERM prints one line, ``interrupted: resume with resume=true
  paths.output_dir=DIR``, and exits with status 130; the run's manifest says ``interrupted``
  (:class:`obliviate.run.Run`).
- A finished command prints its run directory and what the directory holds
  (:func:`run_summary`).

``OBLIVIATE_DEBUG=1`` lets errors and interrupts raise with their tracebacks instead.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from obliviate.errors import ObliviateError

T = TypeVar("T")
EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130
# Folders inside a run dir that are bookkeeping, not results (Hydra's copy of the config,
# Trainer checkpoints and its scratch output).
_HIDDEN = {".hydra", "trainer"}


_PENDING = threading.Event()


def _in_finalizer(frame: Any) -> bool:
    """True inside a ``__del__`` (or a weakref/GC callback): an exception raised there is
    printed as "Exception ignored" and lost."""
    depth = 0
    while frame is not None and depth < 8:
        if frame.f_code.co_name == "__del__":
            return True
        frame, depth = frame.f_back, depth + 1
    return False


def interrupt_handler(signum: int, frame: Any) -> None:
    """SIGTERM (and SIGINT under :func:`guarded`) -> ``KeyboardInterrupt``; deferred to the next
    training step (:func:`raise_if_interrupted`) when it lands in a finalizer."""
    _PENDING.set()
    if not _in_finalizer(frame):
        raise KeyboardInterrupt(f"signal {signum}")


def raise_if_interrupted() -> None:
    """Raise ``KeyboardInterrupt`` when a signal arrived that could not be raised at once."""
    if _PENDING.is_set():
        raise KeyboardInterrupt("signal")


def interrupted_message(run_dir: str | Path | None) -> str:
    """The one line printed on Ctrl-C / SIGTERM."""
    if run_dir is not None and (Path(run_dir) / "manifest.json").is_file():
        return f"interrupted: resume with resume=true paths.output_dir={run_dir}"
    return "interrupted (before the run started writing; nothing to resume)"


def guarded(fn: Callable[[], T], run_dir: Callable[[], Any] = lambda: None) -> T:
    """Run a command: user errors -> one line + exit 2, Ctrl-C/SIGTERM -> one line + exit 130.

    Args:
        fn: The command.
        run_dir: Gives the run directory (for the resume hint); may raise or return ``None``.
    """
    from obliviate.extras import as_missing_dependency

    debug = bool(os.environ.get("OBLIVIATE_DEBUG"))
    main_thread = threading.current_thread() is threading.main_thread()
    previous = {}
    if main_thread:
        _PENDING.clear()
        previous = {sig: signal.signal(sig, interrupt_handler) for sig in (signal.SIGTERM, signal.SIGINT)
                    if signal.getsignal(sig) is not signal.SIG_IGN}
    try:
        return fn()
    except ObliviateError as exc:
        if debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    except ImportError as exc:
        missing = as_missing_dependency(exc)
        if missing is None or debug:
            raise
        print(f"error: {missing}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    except KeyboardInterrupt:
        if debug:
            raise
        try:
            where = run_dir()
        except Exception:  # noqa: BLE001  (no config yet: no run dir to name)
            where = None
        _close_progress_bars()  # otherwise they redraw after the message, at exit
        sys.stderr.flush()
        print(f"\n{interrupted_message(where)}", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _close_progress_bars() -> None:
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        return
    for bar in list(getattr(tqdm, "_instances", ())):
        try:
            bar.close()
        except Exception:  # noqa: BLE001  (a half-torn-down bar: nothing to redraw)
            pass


def _brace(prefix: str, names: list[str]) -> str:
    return f"{prefix}{names[0]}" if len(names) == 1 else f"{prefix}{{{','.join(names)}}}"


def written_files(run_dir: str | Path) -> list[str]:
    """The run directory's result files (relative paths, sorted), Trainer scratch folders left out."""
    root = Path(run_dir)
    out = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if path.is_file() and not any(part in _HIDDEN or part.startswith(".") for part in rel.parts):
            out.append(rel.as_posix())
    return out


def describe_files(files: list[str], max_listed: int = 4) -> str:
    """``config.yaml, eval/{original,retrain}.json, random_10pct/ (40 files)``: files at the top,
    then one entry per folder (its files in braces when there are at most ``max_listed``)."""
    top = [f for f in files if "/" not in f]
    groups: dict[str, list[str]] = {}
    for f in files:
        if "/" in f:
            head, rest = f.split("/", 1)
            groups.setdefault(head, []).append(rest)
    parts = list(top)
    for head, rest in groups.items():
        if len(rest) <= max_listed:
            stems = {Path(r).suffix for r in rest}
            if len(stems) == 1 and all("/" not in r for r in rest) and len(rest) > 1:
                suffix = stems.pop()
                parts.append(_brace(f"{head}/", [r[: len(r) - len(suffix)] for r in rest]) + suffix)
            else:
                parts.append(_brace(f"{head}/", rest))
        else:
            parts.append(f"{head}/ ({len(rest)} files)")
    return ", ".join(parts)


def run_summary(run_dir: str | Path, extra: dict[str, Any] | None = None) -> str:
    """Two or more lines: ``run dir: DIR`` and ``wrote: ...`` (plus ``key: value`` lines of ``extra``)."""
    files = written_files(run_dir)
    lines = [f"run dir: {run_dir}", f"wrote:   {describe_files(files) if files else 'nothing'}"]
    lines += [f"{k + ':':<8} {v}" for k, v in (extra or {}).items() if v is not None]
    return "\n".join(lines)
