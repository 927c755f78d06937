"""The rich console the commands print with: a terminal's own width, and a readable width (not rich's
80 columns) when the output goes to a file, a pipe or a CI log."""

from __future__ import annotations

import os
import sys

from rich.console import Console

PIPE_WIDTH = 140


def make_console(**kw: object) -> Console:
    if "width" not in kw and not sys.stdout.isatty() and not os.environ.get("COLUMNS"):
        kw["width"] = PIPE_WIDTH
    return Console(highlight=False, **kw)  # type: ignore[arg-type]
