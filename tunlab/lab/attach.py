"""A running lab seen from another process (`tunlab cli`, `tunlab capture`, `tunlab relay-stats RUN NODE`):
its nodes, links and relays, read from the run's ledger and meta.json; commands run in its namespaces.

Nothing here creates or removes anything the run recorded; ``link_state`` only sets an interface of the lab
down or up, inside the lab's own namespace.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tunlab.errors import TunlabError
from tunlab.lab.ledger import Ledger
from tunlab.model.names import veth_name


@dataclass(frozen=True)
class NodeView:
    name: str
    role: str
    overlay_ip: str
    overlay_dev: str
    netns_file: str
    control: str


@dataclass(frozen=True)
class LinkView:
    name: str
    a: str
    b: str
    a_if: str
    b_if: str
    a_addr: str
    b_addr: str
    transport: str


class AttachedLab:
    """The lab of ``ledger`` (a run that is up or running)."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self.run_id = ledger.run_id
        meta = ledger.meta()
        self.meta = meta
        self.nodes: dict[str, NodeView] = {}
        for name, info in (meta.get("nodes") or {}).items():
            nsfile = str(info.get("netns_file") or f"/run/netns/{info.get('netns')}")
            self.nodes[name] = NodeView(name, str(info.get("role", "?")), str(info.get("overlay_ip", "")),
                                        str(info.get("overlay_dev", "")), nsfile, str(info.get("control", "")))
        graph = meta.get("graph") or {}
        self.graph: dict[str, Any] = graph
        # the plan names link i's ends ve-<run>-<i>a / -<i>b (model/names.py), on both backends
        self.links = [LinkView(lk["name"], lk["a"], lk["b"], veth_name(self.run_id, i, "a"),
                               veth_name(self.run_id, i, "b"), lk["a_addr"], lk["b_addr"], lk["transport"])
                      for i, lk in enumerate(graph.get("links") or [])]
        if not self.nodes:
            raise TunlabError(f"run {self.run_id} records no nodes", "is it a lab started by `tunlab up` or run?")

    def node(self, name: str) -> NodeView:
        try:
            return self.nodes[name]
        except KeyError:
            raise TunlabError(f"run {self.run_id} has no node '{name}'",
                              f"nodes: {', '.join(self.nodes)}") from None

    def link(self, x: str, y: str) -> LinkView:
        for lk in self.links:
            if {lk.a, lk.b} == {x, y}:
                return lk
        raise TunlabError(f"run {self.run_id} has no link between {x} and {y}",
                          f"links: {', '.join(lk.name for lk in self.links) or 'none recorded'}")

    def link_named(self, name: str) -> LinkView:
        for lk in self.links:
            if lk.name == name:
                return lk
        raise TunlabError(f"run {self.run_id} has no link '{name}'",
                          f"links: {', '.join(lk.name for lk in self.links) or 'none recorded'}")

    def argv(self, node: str, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside ``node``'s namespace."""
        nsfile = self.node(node).netns_file
        if not os.path.exists(nsfile):
            raise TunlabError(f"node '{node}' of run {self.run_id} has no namespace any more ({nsfile})")
        return [shutil.which("nsenter") or "nsenter", f"--net={nsfile}", "--", *argv]

    def run(self, node: str, argv: Sequence[str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.argv(node, argv), capture_output=True, text=True, timeout=timeout, check=False,
                              stdin=subprocess.DEVNULL)

    def link_state(self, lk: LinkView, up: bool) -> None:
        """Set both ends of ``lk`` down or up (inside the lab's namespaces)."""
        for node, ifname in ((lk.a, lk.a_if), (lk.b, lk.b_if)):
            res = self.run(node, ["ip", "link", "set", "dev", ifname, "up" if up else "down"])
            if res.returncode != 0:
                raise TunlabError(f"link {lk.name}: `ip link set {ifname}` in {node} failed: "
                                  f"{(res.stderr or res.stdout).strip()}")

    def link_is_up(self, lk: LinkView) -> bool:
        # (not /sys/class/net: nsenter --net leaves /sys showing the root namespace)
        for node, ifname in ((lk.a, lk.a_if), (lk.b, lk.b_if)):
            res = self.run(node, ["ip", "-o", "link", "show", "dev", ifname])
            flags = res.stdout.split("<", 1)[-1].split(">", 1)[0].split(",") if res.returncode == 0 else []
            if "UP" not in flags or "LOWER_UP" not in flags:
                return False
        return True

    def counters(self, node: str) -> dict[str, Any]:
        from tunlab.relay.control import query_stats

        control = self.node(node).control
        if not control or not os.path.exists(control):
            raise TunlabError(f"the relay of node '{node}' is not running (no control socket {control})")
        return dict(query_stats(control, timeout=2.0))

    def impair(self, link: str, direction: str | None, spec: str | None, *, clear: bool = False,
               state: str | None = None) -> list[dict[str, Any]]:
        """Change a link's impairments through its relays' control sockets (lab/impairs.py)."""
        from tunlab.lab import impairs

        lk = impairs.find_link(self.links, link)

        def control(node: str) -> str:
            path = self.node(node).control
            if not path or not os.path.exists(path):
                raise TunlabError(f"the relay of node '{node}' is not running (no control socket {path})")
            return path
        return impairs.apply(lk.name, lk.a, lk.b, direction, impairs.request(spec, clear=clear, state=state), control)

    def relay_state(self, node: str) -> str:
        """up (every peer connected), degraded (a peer is not), dead (no answer)."""
        try:
            peers = self.counters(node).get("peers") or {}
        except (TunlabError, OSError):
            return "dead"
        return "up" if all(p.get("connected") for p in peers.values()) else "degraded"
