"""Progress of a lab bring-up on stderr, read from the run's ledger (which records every namespace and relay
before it is made), so a 100-node `tunlab up` is never silent and the lab needs no callback for it.

On a terminal: one status line rewritten in place. Elsewhere (a pipe, a CI log): a line whenever the counts
changed, at most one per ``every`` seconds. Labs that come up faster than ``after`` seconds print nothing.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from types import TracebackType
from typing import Any, TextIO


def counts(entries: list[dict[str, Any]]) -> tuple[int, int]:
    """(namespaces or hosts made, relays started) according to ledger entries."""
    nodes = sum(1 for e in entries if e.get("op") == "netns" or (e.get("op") == "proc" and e.get("role") == "mn-host"))
    relays = sum(1 for e in entries if e.get("op") == "proc" and e.get("role") == "relay")
    return nodes, relays


class BringUpProgress:
    def __init__(self, lab: Any, n_nodes: int, *, stream: TextIO | None = None, after: float | None = None,
                 every: float = 1.0) -> None:
        self.lab = lab
        self.n = n_nodes
        self.stream = stream if stream is not None else sys.stderr
        # $TUNLAB_PROGRESS_AFTER: seconds before the first progress line (default 0.5)
        self.after = after if after is not None else float(os.environ.get("TUNLAB_PROGRESS_AFTER") or 0.5)
        self.every = every
        self.lines: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="tunlab-progress", daemon=True)
        self._tty = bool(getattr(self.stream, "isatty", lambda: False)())

    def __enter__(self) -> BringUpProgress:
        self._t0 = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join()
        if self._tty and self.lines:
            self.stream.write("\r\033[K")  # the status line goes; the result line follows
            self.stream.flush()

    def line(self) -> str | None:
        ledger = getattr(self.lab, "_ledger", None)
        if ledger is None:
            return None
        nodes, relays = counts(ledger.entries())
        stage = "namespaces" if relays == 0 else "relays"
        return (f"tunlab up: {ledger.run_id}: {stage}: nodes {nodes}/{self.n}, relays {relays}/{self.n} "
                f"({time.monotonic() - self._t0:.1f} s)")

    def _watch(self) -> None:
        if self._stop.wait(self.after):
            return
        last_counts = None
        while True:
            text = self.line()
            if text is not None:
                now_counts = text.split(" (")[0]
                if self._tty:
                    self.stream.write("\r\033[K" + text)
                    self.stream.flush()
                    self.lines.append(text)
                elif now_counts != last_counts:
                    self.stream.write(text + "\n")
                    self.stream.flush()
                    self.lines.append(text)
                last_counts = now_counts
            # until the ledger exists there is nothing to count: look again soon, not a whole period later
            if self._stop.wait(0.1 if self._tty or text is None else self.every):
                return
