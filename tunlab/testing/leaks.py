"""After a lab is torn down: did it leave anything behind?

Looks for what the run created, by its run id (every name a run creates carries it; every relay carries
``TUNLAB_RUN=<id>`` in its environment) and by the objects its ledger recorded. Read-only: it never removes
anything, it names what it found so the test fails loudly.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from tunlab.lab.ledger import process_alive, tagged_pids

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
    pids = {pid for pid, started in recorded.pids.items() if process_alive(pid, started)}
    pids |= {pid for pid in tagged_pids(run_id) if process_alive(pid, None)}
    found += [f"process {pid}" for pid in sorted(pids)]
    return found


def leak_message(recorded: Recorded, found: list[str]) -> str:
    shown = ", ".join(found[:10]) + (f" and {len(found) - 10} more" if len(found) > 10 else "")
    return (f"tunlab lab {recorded.run_id} left {len(found)} thing(s) behind after teardown: {shown} "
            "(remove them by name: sudo ip netns delete NAME / ip link delete NAME / kill PID)")
