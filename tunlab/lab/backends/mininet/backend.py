"""The Mininet backend: the same lab plan, built as Mininet hosts and links (``--backend mininet``).

Every node is a Mininet ``Host`` (a shell started by ``mnexec`` in a namespace of its own: an *unnamed*
namespace, entered through ``/proc/PID/ns/net``); every underlay link is a Mininet veth ``Link`` between two
hosts, with the plan's interface names (they carry the run id). Nothing is made in the root namespace and
no controller or switch is needed. Mininet makes the hosts and the veth pairs; tunlab then configures the
nodes exactly as the netns backend does (sysctls, persistent TUN, addresses, checksum offload, routes,
nftables), through netlink from a worker thread that enters each host, so both backends give the same
lab. Relays are started by the shared machinery of :class:`~tunlab.lab.backends.base.Backend` and enter the
hosts by pid.

Ownership: each host shell carries ``TUNLAB_RUN=<id>`` and is recorded (``proc``, role ``mn-host``: pid and
start time) right after Mininet starts it; a small holder process (``mn-holder``) keeps the shells'
terminals open so the lab outlives the process that built it (``tunlab up``, or a crash) until ``tunlab
down``/``tunlab clean``. Teardown stops exactly the recorded processes (pid *and* start time must match);
the namespaces, and every veth and TUN in them, disappear with their last process. Mininet's ``mn -c``
(which deletes by name patterns) is never used, nor Mininet's ``fixLimits()`` (machine-wide sysctls).

Link shaping (rate, delay, loss) uses Mininet's ``TCLink``. Options come from the topology's link
(``shaping`` attribute, when the model has one) or from ``$TUNLAB_MININET_LINKS`` (JSON object: link name
-> options, e.g. ``{"sender-vnf1": {"bw": 10}}``). Options that need netem are refused when the kernel has
none, since Mininet would silently skip them. ``$TUNLAB_MININET_SWITCH=bridge|ovs`` puts each link through a
switch of its own (Linux bridge, or a private userspace Open vSwitch), each in its own namespace.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ClassVar, TypeVar

from tunlab.lab.backends import netem, nsutil
from tunlab.relay.device import create_persistent
from tunlab.system import netns
from tunlab.model import shaping
from tunlab.lab.backends.base import Backend
from tunlab.lab.backends.mininet.support import import_mininet, require_mininet
from tunlab.errors import TunlabError
from tunlab.lab.ledger import ENV_TAG, Entry, Ledger, Remover, proc_start_time, process_alive
from tunlab.model.plan import NodePlan

T = TypeVar("T")

LINKS_ENV = "TUNLAB_MININET_LINKS"
SWITCH_ENV = "TUNLAB_MININET_SWITCH"
HOST_STARTERS = 8  # Mininet host shells started in parallel

# Say how to install Mininet before a lab reserves anything (the lab looks the backend up first).
require_mininet(probe_import=False)


def link_shaping(plan_links: Sequence[Any], topo_links: Sequence[Any],
                 env: Mapping[str, str] | None = None) -> dict[str, shaping.LinkShaping]:
    """Validated shaping per link name, from the model (``link.shaping``) and ``$TUNLAB_MININET_LINKS``."""
    env = os.environ if env is None else env
    raw: dict[str, Any] = {}
    for lk in topo_links:
        opts = getattr(lk, "shaping", None)
        if opts:
            raw[lk.name] = dict(opts)
    text = env.get(LINKS_ENV, "").strip()
    if text:
        try:
            extra = json.loads(text)
        except ValueError as exc:
            raise shaping.LinkOptionError(f"${LINKS_ENV}: not JSON ({exc.msg})",
                                             'write it like {"sender-vnf1": {"bw": 10}}') from None
        if not isinstance(extra, dict) or not all(isinstance(v, dict) for v in extra.values()):
            raise shaping.LinkOptionError(f"${LINKS_ENV}: must map link names to option objects",
                                             'write it like {"sender-vnf1": {"bw": 10}}')
        for name, opts in extra.items():
            raw[name] = {**raw.get(name, {}), **opts}
    known = {lk.name for lk in plan_links}
    out = {}
    for name, opts in raw.items():
        where = f"link '{name}'"
        if name not in known:
            raise shaping.LinkOptionError(f"{where}: the topology has no such link",
                                             f"links: {', '.join(sorted(known))}")
        shaped = shaping.parse_link_options(opts, where=where)
        netem.require_netem_for(shaped, where=where)
        if not shaped.empty:
            out[name] = shaped
    return out


def fabric_mode(env: Mapping[str, str] | None = None) -> str | None:
    """``$TUNLAB_MININET_SWITCH``: None (default: a veth straight from host to host), ``bridge`` (each link
    through a Linux bridge) or ``ovs`` (each link through an Open vSwitch bridge, userspace datapath)."""
    env = os.environ if env is None else env
    value = env.get(SWITCH_ENV, "").strip().lower()
    if value in ("", "none", "direct"):
        return None
    if value not in ("bridge", "ovs"):
        raise TunlabError(f"${SWITCH_ENV}={value!r} is not a Mininet fabric",
                          "use 'none' (host to host veths, the default), 'bridge' or 'ovs'")
    if value == "ovs":
        import_mininet()
        from tunlab.lab.backends.mininet.nodes import ovs_unavailable_reason

        reason = ovs_unavailable_reason()
        if reason:
            raise TunlabError(f"${SWITCH_ENV}=ovs: {reason}")
    return value


class MininetBackend(Backend):
    name: ClassVar[str] = "mininet"

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        import_mininet()  # one line with the install command when Mininet is missing
        # refuse shaping we cannot honour before anything exists
        self.shaping = link_shaping(self.plan.links, self.plan.topology.links)
        self.fabric = fabric_mode()
        self.net: Any = None  # the mininet.net.Mininet holding the hosts and links
        self.hosts: dict[str, Any] = {}  # node name -> mininet Host
        self._starts: dict[str, int | None] = {}  # node name -> start time of its shell
        self._holder: subprocess.Popen[bytes] | None = None
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"tunlab-mn-{self.plan.run_id}")

    def _in_worker(self, fn: Callable[[], T]) -> T:
        return self._worker.submit(fn).result()

    # ---------------------------------------------------------------------- entering nodes
    def host_pid(self, node: str) -> int:
        host = self.hosts.get(node)
        if host is None or host.pid is None:
            raise TunlabError(f"node '{node}' has no Mininet host (the lab is not up)")
        return int(host.pid)

    def netns_file(self, node: str) -> str:
        pid = self.host_pid(node)
        if not process_alive(pid, self._starts.get(node)):
            raise TunlabError(f"the Mininet host of node '{node}' (pid {pid}) is gone", "is the lab still up?")
        return f"/proc/{pid}/ns/net"

    # ---------------------------------------------------------------------- nodes
    def create_nodes(self) -> None:
        from tunlab.lab.backends.mininet.nodes import LabHost, QuietMininet

        self.net = QuietMininet(topo=None, controller=None, host=LabHost, build=False, autoSetMacs=False)
        # Each host is a shell that takes ~20 ms to come up, mostly waiting for bash: start them a few at
        # a time. Hosts are named after the nodes (net["vnf1"], `vnf1 ping ...` in Mininet's CLI); their
        # shells carry TUNLAB_RUN=<id> like every process of the run, and stop on SIGTERM.
        tag = {ENV_TAG: self.ledger.run_id}

        def make(n: NodePlan) -> Any:
            host = LabHost(n.name, quiet=False, env=tag)
            start = proc_start_time(host.pid)
            self.ledger.append({"op": "proc", "role": "mn-host", "node": n.name, "pid": host.pid,
                                "start": start, "argv0": "bash"})
            return host, start

        with ThreadPoolExecutor(max_workers=HOST_STARTERS, thread_name_prefix="tunlab-mn-host") as pool:
            made = list(pool.map(make, self.plan.nodes))
        for n, (host, start) in zip(self.plan.nodes, made):
            self.net.hosts.append(host)  # what Mininet.addHost does, without its address defaults
            self.net.nameToNode[host.name] = host
            self.hosts[n.name] = host
            self._starts[n.name] = start
        self._start_holder()
        self.ledger.append(*({"op": "tun", "node": n.name, "ifname": n.overlay_dev} for n in self.plan.nodes))
        files = {n.name: self.netns_file(n.name) for n in self.plan.nodes}

        def work() -> None:
            for n in self.plan.nodes:
                with netns.entered(files[n.name]):
                    for key, value in nsutil.node_sysctls(n):
                        nsutil.write_sysctl(key, value)
                    from pyroute2 import IPRoute

                    with IPRoute() as ipr:
                        ipr.link("set", index=1, state="up")
                    create_persistent(n.overlay_dev)

        self._in_worker(work)

    def _start_holder(self) -> None:
        """A process that keeps the host shells' terminals open, so the hosts live as long as the lab
        does, not as long as this process (`tunlab up`). It holds nothing else and stops on SIGTERM."""
        masters = [h.stdout.fileno() for h in self.hosts.values() if h.stdout is not None]
        self._holder = subprocess.Popen(
            ["sleep", "infinity"], pass_fds=masters, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, start_new_session=True, env=self.env())
        self.ledger.append({"op": "proc", "role": "mn-holder", "pid": self._holder.pid,
                            "start": proc_start_time(self._holder.pid), "argv0": "sleep"})

    # ---------------------------------------------------------------------- links
    def create_links(self) -> None:
        from mininet.link import Link, TCLink

        from tunlab.lab.backends.mininet.nodes import LabIntf, LabTCIntf

        def add(a: Any, b: Any, name1: str, name2: str, ip1: str | None, ip2: str | None,
                shaped: shaping.LinkShaping | None) -> None:
            common: dict[str, Any] = {
                "intfName1": name1, "intfName2": name2, "addr1": None, "addr2": None,
                "params1": {"ip": ip1} if ip1 else {}, "params2": {"ip": ip2} if ip2 else {}}
            if shaped is None:
                self.net.addLink(a, b, cls=Link, intf=LabIntf, **common)
            else:
                # TCIntf also runs ethtool: keep GRO and rx checksum as the kernel's defaults, tx off
                self.net.addLink(a, b, cls=TCLink, intf=LabTCIntf, cls1=LabTCIntf, cls2=LabTCIntf,
                                 gro=False, txo=False, rxo=True, **shaped.tclink_params(), **common)

        links = self.plan.links
        big = [lk for lk in links if lk.mtu > 1500]
        if self.fabric and big:  # a switch port would stay at 1500 and drop what the veths were sized for
            raise TunlabError(f"overlay MTU {self.plan.topology.mtu} needs {big[0].mtu}-byte veths on UDP hop "
                              f"{big[0].name}, and ${SWITCH_ENV}={self.fabric} switches carry 1500",
                              "unset $TUNLAB_MININET_SWITCH, use mtu <= 1472, or use TCP hops")
        switches = self._create_switches() if self.fabric else {}
        self.ledger.append(*({"op": "mn-link", "name": lk.name, "a": lk.a.node, "ifname": lk.a.ifname,
                              "b": lk.b.node, "peer": lk.b.ifname, "switch": getattr(switches.get(lk.name),
                                                                                        "name", None)}
                             for lk in links))
        for lk in links:
            a, b = self.hosts[lk.a.node], self.hosts[lk.b.node]
            ip_a, ip_b = f"{lk.a.ip}/{lk.prefixlen}", f"{lk.b.ip}/{lk.prefixlen}"
            shaped = self.shaping.get(lk.name)
            sw = switches.get(lk.name)
            if sw is None:
                add(a, b, lk.a.ifname, lk.b.ifname, ip_a, ip_b, shaped)
            else:  # a - switch - b; the shaping sits on a's side
                add(a, sw, lk.a.ifname, f"{sw.name}pa", ip_a, None, shaped)
                add(sw, b, f"{sw.name}pb", lk.b.ifname, None, ip_b, None)
        if switches:
            self._start_switches(list(switches.values()))

    def _create_switches(self) -> dict[str, Any]:
        """One switch per underlay link (each in a namespace of its own), recorded like the hosts."""
        from tunlab.lab.backends.mininet.nodes import NsBridge, NsOvsSwitch

        run_id, tag = self.ledger.run_id, {ENV_TAG: self.ledger.run_id}

        def make(lk: Any) -> Any:
            name = f"{run_id}sw{lk.index}"  # also the bridge's name, inside its own namespace
            if self.fabric == "ovs":
                return NsOvsSwitch(name, rundir=f"{self.plan.run_dir}/{name}", env=tag)
            return NsBridge(name, env=tag)

        def make_recorded(lk: Any) -> Any:
            sw = make(lk)
            self.ledger.append({"op": "proc", "role": "mn-switch", "node": sw.name, "pid": sw.pid,
                                "start": proc_start_time(sw.pid), "argv0": "bash"})
            return sw

        with ThreadPoolExecutor(max_workers=HOST_STARTERS, thread_name_prefix="tunlab-mn-switch") as pool:
            made = dict(zip((lk.name for lk in self.plan.links), pool.map(make_recorded, self.plan.links)))
        for sw in made.values():
            self.net.switches.append(sw)
            self.net.nameToNode[sw.name] = sw
        return made

    def _start_switches(self, switches: list[Any]) -> None:
        with ThreadPoolExecutor(max_workers=HOST_STARTERS, thread_name_prefix="tunlab-mn-switch") as pool:
            errors = [f.exception() for f in [pool.submit(sw.start, []) for sw in switches]]
        daemons = [pid for sw in switches for pid in getattr(sw, "daemon_pids", list)()]
        self.ledger.append(*({"op": "proc", "role": "ovs", "pid": pid, "start": proc_start_time(pid),
                              "argv0": "ovs"} for pid in daemons))
        failed = [e for e in errors if e is not None]
        if failed:
            raise TunlabError(f"a switch of the Mininet fabric did not start: {failed[0]}")

    # ---------------------------------------------------------------------- configuration
    def configure_nodes(self) -> None:
        nodes = self.plan.nodes
        files = {n.name: self.netns_file(n.name) for n in nodes}
        # veths of fast-datapath hops keep tx checksum offload, except through OVS's userspace datapath (it
        # reads frames from packet sockets, whole GSO sends included) and on shaped links (TCLink's own
        # ethtool settings)
        tx_csum = frozenset() if self.fabric == "ovs" else nsutil.gso_links(self.plan) - set(self.shaping)

        def work() -> None:
            from pyroute2 import IPRoute

            for n in nodes:
                with netns.entered(files[n.name]), IPRoute() as ipr, \
                        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                    nsutil.configure_node(ipr, sock, n, tx_csum)

        self._in_worker(work)
        self.net.built = True  # Mininet's own bookkeeping: hosts and links exist and are configured
        self.apply_nft([n for n in nodes if n.nft])

    # ---------------------------------------------------------------------- teardown
    def teardown(self) -> list[str]:
        try:
            errors = super().teardown()
        finally:
            self._worker.shutdown(wait=False)
        if self._holder is not None:
            try:
                self._holder.wait(timeout=1)
            except subprocess.TimeoutExpired:
                pass
        # Mininet's objects: the shells are gone; close their terminals and reap them (no commands sent),
        # and drop them from Mininet's class-wide fd -> node maps
        if self.net is not None:
            nodes = list(self.net.hosts) + list(self.net.switches)
            for node in nodes:
                try:
                    node.terminate()
                except OSError:
                    pass
            for table in (type(nodes[0]).inToNode, type(nodes[0]).outToNode) if nodes else ():
                for fd in [fd for fd, node in table.items() if node in nodes]:
                    del table[fd]
        return errors

    @classmethod
    def netns_files(cls, ledger: Ledger) -> list[str]:
        return [f"/proc/{e['pid']}/ns/net" for e in ledger.entries()
                if e["op"] == "proc" and e.get("role") == "mn-host" and isinstance(e.get("pid"), int)
                and process_alive(int(e["pid"]), e.get("start"))]

    @classmethod
    def removers(cls, ledger: Ledger) -> dict[str, Remover]:
        def inside_hosts(entries: Sequence[Entry]) -> None:
            # veth pairs and TUN devices exist only inside this run's hosts and go with them (the hosts'
            # shells are "proc" entries, stopped by pid and start time like the relays)
            return None

        return {**super().removers(ledger), "mn-link": inside_hosts, "tun": inside_hosts}



