"""The rich console the commands print with: a terminal's own width, and a readable width (not rich's
80 columns) when the output goes to a file, a pipe or a CI log; and output that survives a terminal or pipe
that cannot encode the report's few non-ASCII characters (``PYTHONIOENCODING=ascii``, ``LANG=C`` on an old
Python): they become ASCII look-alikes instead of a ``UnicodeEncodeError``."""

from __future__ import annotations

import codecs
import io
import os
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console

PIPE_WIDTH = 140
ERRORS = "tunlab-ascii"

# what the reports use, and the box/rule characters rich draws with, as ASCII
_ASCII = {"—": "-", "–": "-", "↩": "<-", "·": ".", "✔": "ok", "✘": "x", "…": "...", "→": "->", "←": "<-",
          "─": "-", "━": "-", "│": "|", "┃": "|", "═": "=", "║": "|", "“": '"', "”": '"', "‘": "'", "’": "'",
          "\u00a0": " "}


def _ascii_fallback(exc: UnicodeError) -> tuple[str, int]:
    if not isinstance(exc, UnicodeEncodeError):
        raise exc
    bad = exc.object[exc.start:exc.end]
    return "".join(_ASCII.get(ch, "+" if 0x2500 <= ord(ch) <= 0x257F else "?") for ch in bad), exc.end


codecs.register_error(ERRORS, _ascii_fallback)


def can_encode(stream: Any, sample: str = "—↩─") -> bool:
    encoding = getattr(stream, "encoding", None) or "ascii"
    try:
        sample.encode(encoding)
    except (UnicodeEncodeError, LookupError):
        return False
    return True


def ascii_safe_streams() -> None:
    """Make stdout and stderr replace what their encoding cannot carry instead of raising."""
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper) and not can_encode(stream):
            stream.reconfigure(errors=ERRORS)


def make_console(**kw: object) -> Console:
    from rich.console import Console  # here, not at the top: `tunlab relay` starts without rich

    if "width" not in kw and not sys.stdout.isatty() and not os.environ.get("COLUMNS"):
        kw["width"] = PIPE_WIDTH
    return Console(highlight=False, **kw)  # type: ignore[arg-type]
