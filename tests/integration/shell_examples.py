"""The shell commands of a markdown page (``README.md``, ``docs/index.md``), in order.

Every fenced ```bash block is read; a trailing backslash joins lines, ``#`` starts a comment
(outside quotes). A command whose comment says ``needs: <what>`` (``# needs: GPU``,
``# needs: network``, ``# needs: 2 processes``) cannot run here and is returned with
``skip`` set to that reason.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

FENCE = re.compile(r"^```bash\s*\n(.*?)^```", re.S | re.M)
NEEDS = re.compile(r"needs:\s*([^#]+)")


@dataclass
class Command:
    text: str          # the command without its comment
    line: int          # 1-based line of the page where it starts
    skip: str | None   # why it is not run (from "# needs: ...")


def _split_comment(line: str) -> tuple[str, str]:
    """``(code, comment)`` of one shell line (a ``#`` inside quotes is code)."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip(), line[i + 1:].strip()
    return line.rstrip(), ""


def shell_commands(page: str | Path) -> list[Command]:
    """The commands of every ```bash block of ``page``, in order."""
    text = Path(page).read_text()
    out: list[Command] = []
    for block in FENCE.finditer(text):
        start = text[: block.start(1)].count("\n") + 1
        pending, comments, first = "", [], None
        for offset, raw in enumerate(block.group(1).splitlines()):
            code, comment = _split_comment(raw)
            if not code.strip():
                if comment:
                    comments.append(comment)  # a comment line: about the next command
                elif not pending:
                    comments = []  # a blank line ends a group of comments
                continue
            if comment:
                comments.append(comment)
            first = first if pending else start + offset
            if code.endswith("\\"):
                pending += code[:-1].strip() + " "
                continue
            command = (pending + code.strip()).strip()
            needs = next((NEEDS.search(c).group(1).strip() for c in comments if NEEDS.search(c)), None)
            out.append(Command(command, first, needs))
            pending, comments = "", []
    return out


def argv(command: Command) -> list[str]:
    """The command's words (shell quoting removed)."""
    return shlex.split(command.text)
