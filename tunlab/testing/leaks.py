"""After a lab is torn down: did it leave anything behind?

Looks for what the run created, by its run id (every name a run creates carries it; every relay carries
``TUNLAB_RUN=<id>`` in its environment) and by the objects its ledger recorded. Read-only: it never removes
anything, it names what it found so the test fails loudly.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

NETNS_DIR = Path("/run/netns")
SYS_NET = Path("/sys/class/net")


@dataclass
class Recorded:
    """What a run said it created (from its ledger), to check one by one after teardown."""

    run_id: str
    namespaces: set[str] = field(default_factory=set)
    links: set[str] = field(default_factory=set)
    pids: dict[int, int | None] = field(default_factory=dict)  # pid -> start time (/proc/PID/stat field 22)


def _has_id(name: str, run_id: str) -> bool:
    """``run_id`` appears in ``name`` as a whole token (not inside a longer word)."""
    return re.search(rf"(?<![A-Za-z0-9]){re.escape(run_id)}(?![A-Za-z0-9])", name) is not None


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, start time) of ``pid`` from /proc/PID/stat, or None when there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (field 2) may hold spaces and parentheses: split after the last ')'
    rest = stat.rsplit(")", 1)[1].split()
    return (rest[0], int(rest[19])) if len(rest) > 19 else None


def start_time(pid: int) -> int | None:
    stat = _proc_stat(pid)
    return None if stat is None else stat[1]


def _alive(pid: int, started: int | None) -> bool:
    """``pid`` runs (not a zombie: its parent will reap it) and is the process that was recorded."""
    stat = _proc_stat(pid)
    return stat is not None and stat[0] != "Z" and (started is None or stat[1] == started)


def _tagged_pids(run_id: str) -> Iterable[int]:
    tag = f"TUNLAB_RUN={run_id}".encode()
    me = os.getpid()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            env = (entry / "environ").read_bytes()
        except OSError:
            continue
        if tag in env.split(b"\0"):
            yield int(entry.name)


def _names(folder: Path) -> list[str]:
    try:
        return [p.name for p in folder.iterdir()]
    except OSError:
        return []


def leftovers(recorded: Recorded) -> list[str]:
    """One short phrase per thing the run left behind ([] when it left nothing)."""
    run_id = recorded.run_id
    found: list[str] = []
    namespaces = set(recorded.namespaces) | {n for n in _names(NETNS_DIR) if _has_id(n, run_id)}
    found += [f"namespace {n}" for n in sorted(namespaces) if (NETNS_DIR / n).exists()]
    links = set(recorded.links) | {n for n in _names(SYS_NET) if _has_id(n, run_id)}
    found += [f"link {n}" for n in sorted(links) if (SYS_NET / n).exists()]
    pids = {pid for pid, started in recorded.pids.items() if _alive(pid, started)}
    pids |= {pid for pid in _tagged_pids(run_id) if _alive(pid, None)}
    found += [f"process {pid}" for pid in sorted(pids)]
    return found


def leak_message(recorded: Recorded, found: list[str]) -> str:
    shown = ", ".join(found[:10]) + (f" and {len(found) - 10} more" if len(found) > 10 else "")
    return (f"tunlab lab {recorded.run_id} left {len(found)} thing(s) behind after teardown: {shown} "
            f"(remove them with: sudo tunlab clean {recorded.run_id})")
