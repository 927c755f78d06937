"""A host's part of a lab across hosts (issue 19, docs/multihost.md): the netns backend for the nodes placed
on this host, plus an uplink per end of a link that leaves the host.

An uplink is a veth pair from the node (the link's interface and address, as on one host) to the host's
own namespace (the /30's other address). The host forwards its underlay address and the link's port on
it (``Uplink.hport``) to the node's relay, and sends that relay's datagrams to the far host from the same
address and port (nftables DNAT and SNAT in the table ``ip tunlab_<run>``), so the relay hop between hosts
runs over the hosts' own addresses and each relay sees its peer at the far host's underlay address.

Ledger entries besides the netns backend's: ``sysctl`` (key, the value before: IPv4 forwarding is turned
on when it was off, and put back) and ``nft-table`` (family, name); both written before the change.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from typing import Any

from pyroute2 import IPRoute

from tunlab.errors import TunlabError
from tunlab.lab.backends.netns import NetnsBackend
from tunlab.lab.ledger import Entry, Ledger, Remover
from tunlab.model.hosts import Uplink
from tunlab.model.plan import LabPlan, UnderlayLink
from tunlab.system import netns

FORWARD = "/proc/sys/net/ipv4/ip_forward"
NUD = {0x01: "incomplete", 0x02: "reachable", 0x04: "stale", 0x08: "delay", 0x10: "probe", 0x20: "failed",
       0x40: "noarp", 0x80: "permanent"}


def nft_table(run_id: str) -> str:
    return f"tunlab_{run_id}"


def nat_ruleset(run_id: str, uplinks: Sequence[Uplink]) -> str:
    """The host's NAT for its uplinks: the far host's datagrams to the node, the node's from the host."""
    pre, post = [], []
    for u in uplinks:
        node_ip = u.node_addr.split("/")[0]
        protos = ("udp",) if u.transport == "udp" else ("tcp",)
        for proto in protos:
            pre.append(f"ip daddr {u.underlay} {proto} dport {u.hport} dnat to {node_ip}:{u.node_port}")
            if proto == "udp":
                post.append(f"ip saddr {node_ip} ip daddr {u.peer_underlay} udp sport {u.node_port} "
                            f"udp dport {u.peer_hport} snat to {u.underlay}:{u.hport}")
            else:  # the connecting end: from the host's address, any port
                post.append(f"ip saddr {node_ip} ip daddr {u.peer_underlay} tcp dport {u.peer_hport} "
                            f"snat to {u.underlay}")
    # what arrives from the far hosts, counted before the DNAT (so the checks of `underlay_heard` see it)
    seen = [f'ip daddr {u.underlay} {u.transport} dport {u.hport} counter comment "{u.link}"' for u in uplinks]
    return (f"table ip {nft_table(run_id)} {{\n"
            "  chain seen { type filter hook prerouting priority -150; policy accept;\n"
            + "".join(f"    {r}\n" for r in seen) + "  }\n"
            "  chain pre { type nat hook prerouting priority dstnat; policy accept;\n"
            + "".join(f"    {r}\n" for r in pre) + "  }\n"
            "  chain post { type nat hook postrouting priority srcnat; policy accept;\n"
            + "".join(f"    {r}\n" for r in post) + "  }\n}\n")


class HostPartBackend(NetnsBackend):
    name = "hostpart"

    def __init__(self, plan: LabPlan, ledger: Ledger, uplinks: Sequence[Uplink] = ()) -> None:
        super().__init__(plan, ledger)
        self.uplinks = tuple(uplinks)
        for u in self.uplinks:
            if ":" in u.underlay or ":" in u.peer_underlay:
                raise TunlabError(f"link {u.link}: IPv6 underlay addresses between hosts are not supported yet",
                                  "give the hosts IPv4 underlay addresses in the inventory")

    def local_links(self) -> Sequence[UnderlayLink]:
        mine = {n.name for n in self.plan.nodes}
        return [lk for lk in self.plan.links if lk.a.node in mine and lk.b.node in mine]

    def create_links(self) -> None:
        super().create_links()
        if not self.uplinks:
            return
        ns = {n.name: n.netns for n in self.plan.nodes}
        self.ledger.append(*({"op": "link", "netns": ns[u.node], "ifname": u.ifname, "peer_netns": "",
                              "peer": u.host_ifname} for u in self.uplinks))

        def work() -> None:  # in the host's own namespace (the worker thread's)
            with IPRoute() as ipr:
                for u in self.uplinks:
                    with open(netns.netns_path(ns[u.node]), "rb") as node_ns:
                        ipr.link("add", ifname=u.host_ifname, kind="veth",
                                 peer={"ifname": u.ifname, "net_ns_fd": node_ns.fileno()})
                    idx = socket.if_nametoindex(u.host_ifname)
                    ip, plen = u.host_addr.split("/")
                    ipr.addr("add", index=idx, address=ip, prefixlen=int(plen))
                    ipr.link("set", index=idx, state="up")

        self._in_worker(work)

    def configure_nodes(self) -> None:
        super().configure_nodes()
        if not self.uplinks:
            return
        by_node: dict[str, list[Uplink]] = {}
        for u in self.uplinks:
            by_node.setdefault(u.node, []).append(u)

        def routes() -> None:
            for node, ups in by_node.items():
                with netns.entered(self.netns_file(node)), IPRoute() as ipr:
                    for u in ups:
                        ipr.route("add", dst=u.peer_underlay, dst_len=32, gateway=u.host_addr.split("/")[0])

        self._in_worker(routes)
        with open(FORWARD) as f:
            old = f.read().strip()
        if old != "1":
            self.ledger.append({"op": "sysctl", "path": FORWARD, "old": old})
            with open(FORWARD, "w") as f:
                f.write("1")
        table = nft_table(self.plan.run_id)
        self.ledger.append({"op": "nft-table", "family": "ip", "name": table})
        res = subprocess.run(["nft", "-f", "-"], input=nat_ruleset(self.plan.run_id, self.uplinks),
                             capture_output=True, text=True, timeout=30)
        if res.returncode != 0:
            raise TunlabError(f"the host's NAT for links between hosts: nft refused it: {res.stderr.strip()[:300]}",
                              "the host needs nftables with NAT (nf_nat)")

    def underlay_heard(self) -> dict[str, int]:
        """Link -> packets that arrived from the far host at this host's port for it, so far."""
        if not self.uplinks:
            return {}
        res = subprocess.run(["nft", "-j", "list", "chain", "ip", nft_table(self.plan.run_id), "seen"],
                             capture_output=True, text=True, timeout=30)
        out: dict[str, int] = {}
        if res.returncode != 0:
            return out
        for item in json.loads(res.stdout).get("nftables", []):
            rule = item.get("rule") if isinstance(item, dict) else None
            if not rule:
                continue
            for e in rule.get("expr", []):
                if "counter" in e:
                    out[str(rule.get("comment"))] = int(e["counter"].get("packets", 0))
        return out

    def wait_underlay(self, links: Sequence[str], timeout: float,
                      relay_note: Callable[[str], str] = lambda node: "") -> None:
        """Until a packet from the far host has arrived for each of ``links`` (relays that send hellos:
        keyed links, the auto/gso datapaths), or a one-line error naming the underlay path, with what this
        host knew of it and ``relay_note(node)`` (what the silent link's relay says of itself)."""
        deadline = time.monotonic() + timeout
        while True:
            heard = self.underlay_heard()
            silent = [u for u in self.uplinks if u.link in links and heard.get(u.link, 0) == 0]
            if not silent:
                return
            if time.monotonic() > deadline:
                u = silent[0]
                raise TunlabError(f"node {u.node}: nothing from host {u.peer_host} ({u.peer_underlay}) arrived at "
                                  f"{u.underlay}:{u.hport} for link {u.link} within {timeout:.0f} s "
                                  f"({u.transport}) [here: {self.underlay_state(u)}]{relay_note(u.node)}",
                                  "do the hosts reach each other's underlay (any firewall)? tunlab hosts check")
            time.sleep(0.05)

    def underlay_state(self, u: Uplink) -> str:
        """What this host knows of an uplink, for the message of a link that stays silent: the host's
        forwarding, its NAT table, and the connection-tracking entries of the link's ports."""
        parts = []
        try:
            with open(FORWARD) as f:
                parts.append(f"forwarding {f.read().strip()}")
        except OSError as exc:
            parts.append(f"forwarding unknown ({exc.strerror})")
        res = subprocess.run(["nft", "list", "table", "ip", nft_table(self.plan.run_id)],
                             capture_output=True, text=True, timeout=30)
        if res.returncode != 0:
            parts.append(f"NAT table unreadable: {res.stderr.strip()[:120]}")
        try:  # the underlay device's counters and the far host's neighbour entry
            with IPRoute() as ipr:
                addrs = [a for a in ipr.get_addr(family=socket.AF_INET) if a.get_attr("IFA_ADDRESS") == u.underlay]
                if addrs:
                    (link,) = ipr.get_links(addrs[0]["index"])
                    st = link.get_attr("IFLA_STATS64") or {}
                    parts.append(f"{link.get_attr('IFLA_IFNAME')} rx {st.get('rx_packets')} tx {st.get('tx_packets')}"
                                 f" drop {st.get('rx_dropped')}/{st.get('tx_dropped')}")
                neigh = [n for n in ipr.get_neighbours(family=socket.AF_INET) if n.get_attr("NDA_DST") ==
                         u.peer_underlay]
                state = neigh[0]["state"] if neigh else 0
                names = [n for bit, n in NUD.items() if state & bit]
                parts.append(f"neighbour {u.peer_underlay} {'/'.join(names) or 'none'}")
        except Exception as exc:  # noqa: BLE001 - a diagnostic never hides the error it explains
            parts.append(f"links unreadable ({exc})")
        ports = {f"port={u.hport}", f"port={u.peer_hport}"}
        try:
            with open("/proc/net/nf_conntrack") as f:
                tracked = [" ".join(w for w in line.split() if ("=" in w or w.startswith("[")) and not
                                    w.startswith(("mark=", "zone=", "use=")))
                           for line in f if " udp " in line or " tcp " in line]
            mine = [t for t in tracked if any(w.endswith(tuple(ports)) for w in t.split())]
            parts.append("conntrack: " + ("; ".join(mine[:4]) if mine else "nothing on the link's ports"))
        except OSError:
            pass
        return ", ".join(parts)

    @classmethod
    def removers(cls, ledger: Ledger) -> dict[str, Remover]:
        run_id = ledger.run_id

        def tables(entries: Sequence[Entry]) -> None:
            problems = []
            for e in entries:
                name = str(e.get("name", ""))
                if name != nft_table(run_id):
                    problems.append(f"nftables table {name} is not this run's; left alone")
                    continue
                res = subprocess.run(["nft", "delete", "table", str(e.get("family", "ip")), name],
                                     capture_output=True, text=True, timeout=30)
                if res.returncode != 0 and "No such file" not in res.stderr:
                    problems.append(f"nftables table {name}: {res.stderr.strip()[:200]}")
            if problems:
                raise TunlabError("; ".join(problems))

        def sysctls(entries: Sequence[Entry]) -> None:
            for e in entries:
                if e.get("path") == FORWARD and str(e.get("old")) in ("0", "1"):
                    with open(FORWARD, "w") as f:
                        f.write(str(e["old"]))

        return {**super().removers(ledger), "nft-table": tables, "sysctl": sysctls}


def backend_for(uplinks: Sequence[Uplink]) -> Any:
    """A backend factory for :class:`tunlab.lab.lab.Lab` that gives the backend the host's uplinks."""
    return lambda plan, ledger: HostPartBackend(plan, ledger, uplinks)
