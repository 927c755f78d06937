"""The relays' impairment decisions as evidence for the checks (issue 17): a probe that a link's
impairment dropped is named as such -- "dropped by impairment on link vnf1>vnf2 (loss, decision #17)" --
instead of "lost", and a scenario may accept it ("delivered or dropped by impairment", or a loss rate).

Each relay writes its decisions as JSON lines (relay/linkpath.py: link, dir, n, kind, pkt = a digest of
the inner packet as the relay read it from its device); a check finds a probe by the digest of the packet
captured at the TUN just before the link where it went missing.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tunlab.relay.linkpath import DROP_KINDS, digest


class ImpairLog:
    """Drop decisions of every relay of a lab, by packet digest."""

    def __init__(self, decisions: Iterable[dict[str, Any]] = ()) -> None:
        self.drops: dict[str, list[dict[str, Any]]] = {}
        self.count = 0
        for d in decisions:
            self.count += 1
            if d.get("kind") in DROP_KINDS and isinstance(d.get("pkt"), str):
                self.drops.setdefault(d["pkt"], []).append(d)

    @classmethod
    def load(cls, folder: str | Path) -> ImpairLog:
        """Every ``*.impair.jsonl`` in ``folder`` (a lab's run directory); bad lines are skipped."""
        def lines() -> Iterable[dict[str, Any]]:
            for p in sorted(Path(folder).glob("*.impair.jsonl")):
                try:
                    text = p.read_text(errors="replace")
                except OSError:
                    continue
                for line in text.splitlines():
                    try:
                        d = json.loads(line)
                    except ValueError:
                        continue
                    if isinstance(d, dict):
                        yield d
        return cls(lines())

    def drop_of(self, packet: bytes, direction: str) -> dict[str, Any] | None:
        """The decision that dropped ``packet`` (as read by the relay) on ``direction`` ("x>y"), if any."""
        for d in self.drops.get(digest(packet), ()):
            if d.get("dir") == direction:
                return d
        return None


def describe(d: dict[str, Any]) -> str:
    return f"dropped by impairment on link {d.get('dir')} ({d.get('kind')}, decision #{d.get('n')})"
