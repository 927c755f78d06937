"""The default backend: named network namespaces and veth pairs made with pyroute2, no helper processes.

All netlink and sysctl work happens in one worker thread that enters each namespace in turn
(``setns``/``unshare`` act on the calling thread only), with one netlink socket per namespace visit; the
caller's own thread never changes namespace. The root namespace gets nothing: veth ends are created
directly in their namespaces.
"""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from pyroute2 import IPRoute

from tunlab.model import names
from tunlab.lab.backends import nsutil
from tunlab.relay.device import create_persistent
from tunlab.system import netns
from tunlab.lab.backends.base import Backend
from tunlab.lab.backends.netem import require_netem_for
from tunlab.model.shaping import LinkShaping, parse_link_options
from tunlab.errors import TunlabError
from tunlab.lab.ledger import Entry, Ledger, Remover, stop_run_processes
from tunlab.model.plan import LabPlan, UnderlayLink

T = TypeVar("T")



class NetnsBackend(Backend):
    name = "netns"

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        # refuse shaping this kernel cannot honour (netem options) before anything exists
        self.shaping = _link_shaping(self.plan)
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"tunlab-{self.plan.run_id}")

    def _in_worker(self, fn: Callable[[], T]) -> T:
        return self._worker.submit(fn).result()

    def netns_file(self, node: str) -> str:
        return netns.netns_path(self.plan.node(node).netns)

    # ---------------------------------------------------------------------- nodes
    def create_nodes(self) -> None:
        nodes = self.plan.nodes
        self.ledger.append(*({"op": "netns", "name": n.netns} for n in nodes))
        self.ledger.append(*({"op": "tun", "netns": n.netns, "ifname": n.overlay_dev} for n in nodes))
        netns.share_netns_dir()

        def work() -> None:
            for n in nodes:
                with netns.create_named(n.netns):
                    for key, value in nsutil.node_sysctls(n):
                        nsutil.write_sysctl(key, value)
                    with IPRoute() as ipr:
                        ipr.link("set", index=1, state="up")
                    create_persistent(n.overlay_dev)

        self._in_worker(work)

    # ---------------------------------------------------------------------- links
    def local_links(self) -> Sequence[UnderlayLink]:
        """The veth pairs this backend makes (a host's part of a lab across hosts: those within the host)."""
        return self.plan.links

    def create_links(self) -> None:
        links = self.local_links()
        ns = {n.name: n.netns for n in self.plan.nodes}
        self.ledger.append(*({"op": "link", "netns": ns[lk.a.node], "ifname": lk.a.ifname,
                              "peer_netns": ns[lk.b.node], "peer": lk.b.ifname} for lk in links))

        def work() -> None:
            by_a: dict[str, list[Any]] = {}
            for lk in links:
                by_a.setdefault(lk.a.node, []).append(lk)
            for a, lks in by_a.items():
                with netns.entered(netns.netns_path(ns[a])), IPRoute() as ipr:
                    for lk in lks:
                        with open(netns.netns_path(ns[lk.b.node]), "rb") as peer_ns:
                            ipr.link("add", ifname=lk.a.ifname, kind="veth",
                                     peer={"ifname": lk.b.ifname, "net_ns_fd": peer_ns.fileno()})

        self._in_worker(work)

    # ---------------------------------------------------------------------- configuration
    def configure_nodes(self) -> None:
        nodes = self.plan.nodes
        tx_csum = nsutil.gso_links(self.plan)

        def work() -> None:
            for n in nodes:
                with netns.entered(netns.netns_path(n.netns)), IPRoute() as ipr, \
                        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                    nsutil.configure_node(ipr, sock, n, tx_csum)

        self._in_worker(work)
        self.apply_nft([n for n in nodes if n.nft])
        self._apply_shaping()

    def _apply_shaping(self) -> None:
        """Rate limits (tbf, both ends of the veth) for links whose description has ``shaping``."""
        procs = []
        for lk in self.plan.links:
            shaped = self.shaping.get(lk.name)
            if shaped is None or shaped.bw is None:
                continue
            rate_bits = int(shaped.bw * 1e6)
            burst = max(rate_bits // 8 // 100, 16 * 1024)  # 10 ms at the rate, at least 16 KiB
            for end in (lk.a, lk.b):
                argv = ["nsenter", f"--net={self.netns_file(end.node)}", "--", "tc", "qdisc", "replace",
                        "dev", end.ifname, "root", "tbf", "rate", f"{rate_bits}bit", "burst", str(burst),
                        "latency", "50ms"]
                procs.append((lk.name, subprocess.Popen(argv, stdout=subprocess.PIPE,
                                                        stderr=subprocess.STDOUT)))
        for name, p in procs:
            out, _ = p.communicate(timeout=30)
            if p.returncode != 0:
                raise TunlabError(f"link {name} field 'shaping': tc refused the rate limit: "
                                  f"{out.decode(errors='replace').strip()[:300]}")

    def teardown(self) -> list[str]:
        try:
            return super().teardown()
        finally:
            self._worker.shutdown(wait=False)

    # ---------------------------------------------------------------------- removal
    @classmethod
    def netns_files(cls, ledger: Ledger) -> list[str]:
        run_id = ledger.run_id
        return [netns.netns_path(str(e["name"])) for e in ledger.entries()
                if e["op"] == "netns" and names.owned_by(run_id, str(e.get("name", "")))
                and os.path.lexists(netns.netns_path(str(e["name"])))]

    @classmethod
    def removers(cls, ledger: Ledger) -> dict[str, Remover]:
        run_id = ledger.run_id
        owned_ns = {e["name"] for e in ledger.entries() if e["op"] == "netns"}

        def inside_namespaces(entries: Sequence[Entry]) -> None:
            # veth pairs and TUN devices live only in this run's namespaces and go with them
            for e in entries:
                if e.get("netns") not in owned_ns:
                    raise TunlabError(f"{e.get('ifname')} is in namespace {e.get('netns')}, which this run "
                                      "did not record; left alone")

        def namespaces(entries: Sequence[Entry]) -> None:
            refused = [str(e.get("name", "")) for e in entries if not names.owned_by(run_id, str(e.get("name", "")))]
            ours = [str(e["name"]) for e in entries if str(e.get("name", "")) not in refused]
            # nothing may keep a namespace alive once its name is gone: stop whatever runs inside first
            problems = stop_run_processes(run_id, [netns.netns_path(n) for n in ours])
            for name in ours:
                try:
                    netns.remove_named(name)
                except OSError as exc:
                    problems.append(f"namespace {name}: {exc}")
                    continue
                if os.path.lexists(netns.netns_path(name)):
                    problems.append(f"namespace {name} is still there")
            if refused:
                problems.append(f"namespace(s) {', '.join(refused)} do not carry run id {run_id}; left alone")
            if problems:
                raise TunlabError("; ".join(problems))

        return {**super().removers(ledger), "netns": namespaces, "link": inside_namespaces,
                "tun": inside_namespaces}


def _link_shaping(plan: LabPlan) -> dict[str, LinkShaping]:
    out = {}
    for lk in plan.topology.links:
        if not lk.shaping:
            continue
        where = f"link '{lk.name}' field 'shaping'"
        shaped = parse_link_options(dict(lk.shaping), where=where)
        require_netem_for(shaped, where=where)
        out[lk.name] = shaped
    return out

