"""tunlab relays inside an existing Mininet network, for people who already build their labs with Mininet.

::

    from tunlab.lab.backends.mininet.api import add_relay_chain
    chain = add_relay_chain(net, hosts=["h1", "h2", "h3"], transport="udp")
    h1.cmd(f"ping -c1 {chain['h3'].overlay_ip}")     # h1 -> relay -> h2 (kernel VNF) -> relay -> h3
    print(chain.counters())                          # per host: the relay's counters JSON
    chain.stop()                                     # or: with add_relay_chain(...) as chain: ...

Each listed host gets a relay with its own TUN device (``dev``) and an overlay address from ``overlay``
(host i gets the (i+1)-th address). Consecutive hosts talk over the addresses Mininet gave them (the link
between them if there is one, else their default interfaces). The first and last hosts are endpoints; the
hosts in between are VNFs: ``kernel`` VNFs (the default) forward packets in their own kernel (so their
nftables rules and routes act on the chain's traffic); a host listed in ``hooks`` runs a Python function
on each packet instead.

Ownership: the chain has a tunlab run id; every relay carries ``TUNLAB_RUN=<id>`` and is recorded (pid and
start time) in ``/run/tunlab/<id>/ledger.jsonl`` as soon as it starts, so if the script dies, ``sudo tunlab
clean`` stops exactly those relays. The sysctls the chain changes in the hosts (forwarding, rp_filter,
redirects) are put back by ``stop()``.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from tunlab.lab.backends.mininet import proc as mininet_proc
from tunlab.errors import TunlabError
from tunlab.lab.relays import Hop, wait_connected
from tunlab.model.plan import RelayHop, relay_argv
from tunlab.system.pace import patient

DEFAULT_OVERLAY = "172.31.0.0/24"
DEFAULT_PORT = 55555
DEFAULT_DEV = "tlr0"
#: set in VNF hosts while the chain runs (then put back)
VNF_SYSCTLS = {
    "net.ipv4.ip_forward": "1",
    "net.ipv4.conf.all.rp_filter": "0",
    "net.ipv4.conf.default.rp_filter": "0",
    "net.ipv4.conf.all.send_redirects": "0",  # a kernel VNF forwards out of the device it came in by
    "net.ipv4.conf.default.send_redirects": "0",
}


class ChainError(TunlabError):
    """add_relay_chain was given something it cannot build."""


@dataclass
class ChainRelay:
    """One relay of a chain, running inside ``host``."""

    host: Any  # mininet.node.Host
    name: str
    role: str  # "endpoint" | "vnf"
    dev: str
    overlay_ip: str
    args: tuple[str, ...]
    control: str
    stats_file: str
    log_file: str
    proc: Any = None  # subprocess.Popen
    pid: int | None = None
    saved_sysctls: dict[str, str] = field(default_factory=dict)

    def counters(self) -> dict[str, Any]:
        """The relay's live counters (``{"dev": ..., "peers": ..., "drops": ...}``)."""
        from tunlab.relay import query_stats

        if self.proc is None or self.proc.poll() is not None:
            return self.final_counters()
        return dict(query_stats(self.control))

    def final_counters(self) -> dict[str, Any]:
        import json

        try:
            with open(self.stats_file, encoding="utf-8") as fh:
                data = json.load(fh)
        except (OSError, ValueError):
            raise TunlabError(f"relay in {self.name} is not running and left no counters",
                              f"see {self.log_file}") from None
        return dict(data)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class RelayChain:
    """The relays of one chain; a context manager that stops them on exit."""

    def __init__(self, run_id: str, run_dir: Path, relays: list[ChainRelay], ledger: Any) -> None:
        self.run_id = run_id
        self.run_dir = run_dir
        self.relays = relays
        self._ledger = ledger
        self._stopped = False

    def __getitem__(self, name: str) -> ChainRelay:
        for r in self.relays:
            if r.name == name:
                return r
        raise KeyError(name)

    def __iter__(self) -> Iterator[ChainRelay]:
        return iter(self.relays)

    def __len__(self) -> int:
        return len(self.relays)

    def counters(self) -> dict[str, dict[str, Any]]:
        return {r.name: r.counters() for r in self.relays}

    def stop(self, results_dir: str | os.PathLike[str] | None = None) -> dict[str, dict[str, Any]]:
        """Stop every relay, put the hosts' sysctls back, remove the run; return the final counters.

        ``results_dir``: copy the relays' logs and counters there first."""
        if self._stopped:
            return {}
        self._stopped = True
        from tunlab.lab import ledger as ledger_mod

        for r in self.relays:
            if r.proc is not None:
                mininet_proc.stop_process(r.proc)
        # anything the ledger knows of that is still alive (a relay we lost track of)
        errors = ledger_mod.replay(self._ledger, {"proc": ledger_mod.remove_processes(self.run_id)})
        final: dict[str, dict[str, Any]] = {}
        for r in self.relays:
            try:
                final[r.name] = r.final_counters()
            except TunlabError:
                pass
        for r in self.relays:
            _restore_sysctls(r)
        if results_dir is not None:
            from tunlab.system.privileges import chown_to_invoking_user, make_user_dir

            dest = make_user_dir(Path(results_dir) / f"chain-{self.run_id}")  # no link followed
            shutil.copytree(self.run_dir, dest, dirs_exist_ok=True, symlinks=True)
            chown_to_invoking_user(dest)
        self._ledger.remove_dir()
        if errors:
            raise TunlabError("; ".join(errors))
        return final

    def __enter__(self) -> RelayChain:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


# --------------------------------------------------------------------------------------------- building


def _host(net: Any, h: Any) -> Any:
    if isinstance(h, str):
        try:
            return net[h]
        except KeyError:
            raise ChainError(f"add_relay_chain: the network has no host named {h!r}",
                             f"hosts: {', '.join(x.name for x in net.hosts)}") from None
    if getattr(h, "pid", None) is None or not hasattr(h, "cmd"):
        raise ChainError(f"add_relay_chain: {h!r} is not a Mininet host", "pass hosts or host names")
    return h


def _underlay_pair(net: Any, x: Any, y: Any) -> tuple[str, str]:
    """(x's address, y's address) for the hop x -> y: their direct link if any, else default interfaces."""
    for link in net.linksBetween(x, y):
        ix, iy = (link.intf1, link.intf2) if link.intf1.node is x else (link.intf2, link.intf1)
        if ix.IP() and iy.IP():
            return str(ix.IP()), str(iy.IP())
    ax, ay = x.IP(), y.IP()
    if not ax or not ay:
        missing = x.name if not ax else y.name
        raise ChainError(f"add_relay_chain: host {missing} has no IPv4 address to reach "
                         f"{y.name if missing == x.name else x.name} with",
                         "give it one (addHost(..., ip='10.0.0.1/8') or host.setIP) before adding the chain")
    return str(ax), str(ay)


def plan_chain(net: Any, hosts: Sequence[Any], *, transport: str = "udp", overlay: str = DEFAULT_OVERLAY,
               port: int = DEFAULT_PORT, dev: str = DEFAULT_DEV, hooks: Mapping[str, str] | None = None,
               mtu: int | None = None, run_dir: str = "/run/tunlab/RUN",
               log_level: str = "warning") -> list[ChainRelay]:
    """Decide every relay's command line (nothing runs): what :func:`add_relay_chain` starts."""
    hs = [_host(net, h) for h in hosts]
    if len(hs) < 2:
        raise ChainError("add_relay_chain: a chain needs at least two hosts", "hosts=['h1', 'h2', ...]")
    if len({h.name for h in hs}) != len(hs):
        raise ChainError("add_relay_chain: a host appears twice in the chain", "list each host once")
    if transport not in ("udp", "tcp"):
        raise ChainError(f"add_relay_chain: transport={transport!r}", "use 'udp' or 'tcp'")
    if not isinstance(port, int) or not 1 <= port <= 65535:
        raise ChainError(f"add_relay_chain: port={port!r} is not a port number", "use 1-65535")
    try:
        net_ov = ipaddress.IPv4Network(overlay, strict=False)
    except ValueError:
        raise ChainError(f"add_relay_chain: overlay={overlay!r} is not an IPv4 prefix",
                         "write it like 172.31.0.0/24") from None
    if net_ov.num_addresses < len(hs) + 2:
        raise ChainError(f"add_relay_chain: overlay {net_ov} is too small for {len(hs)} hosts",
                         "use a shorter prefix")
    hooks = dict(hooks or {})
    for name in hooks:
        if name not in {h.name for h in hs[1:-1]}:
            raise ChainError(f"add_relay_chain: hooks[{name!r}]: only hosts inside the chain run hooks",
                             f"inner hosts: {', '.join(h.name for h in hs[1:-1]) or 'none'}")
    pairs = [_underlay_pair(net, x, y) for x, y in zip(hs, hs[1:])]
    overlay_ips = [str(net_ov.network_address + i + 1) for i in range(len(hs))]

    relays = []
    for i, h in enumerate(hs):
        # each host connects (TCP) to the next one, which listens and accepts it
        hops = []
        if i > 0:
            hops.append(RelayHop(hs[i - 1].name, pairs[i - 1][1], port, pairs[i - 1][0], port, transport,
                                 listens=True))
        if i < len(hs) - 1:
            hops.append(RelayHop(hs[i + 1].name, pairs[i][0], port, pairs[i][1], port, transport, listens=False))
        routes = {f"{overlay_ips[j]}/32": (hs[i - 1].name if j < i else hs[i + 1].name)
                  for j in range(len(hs)) if j != i}
        device = ["--dev", dev, "--addr", f"{overlay_ips[i]}/{net_ov.prefixlen}"]
        if mtu is not None:
            device += ["--mtu", str(mtu)]
        base = f"{run_dir}/{h.name}"
        args = relay_argv(device=device, transport=transport, hops=hops, routes=routes, hook=hooks.get(h.name),
                          control=f"{base}.ctl", stats_file=f"{base}.stats.json", log_file=f"{base}.log",
                          extra=("--log-level", log_level))
        role = "endpoint" if i in (0, len(hs) - 1) else "vnf"
        relays.append(ChainRelay(host=h, name=h.name, role=role, dev=dev, overlay_ip=overlay_ips[i],
                                 args=args, control=f"{base}.ctl", stats_file=f"{base}.stats.json",
                                 log_file=f"{base}.log"))
    return relays


def add_relay_chain(net: Any, hosts: Sequence[Any], *, transport: str = "udp", overlay: str = DEFAULT_OVERLAY,
                    port: int = DEFAULT_PORT, dev: str = DEFAULT_DEV, hooks: Mapping[str, str] | None = None,
                    mtu: int | None = None, ready_timeout: float | None = None,
                    log_level: str = "warning") -> RelayChain:
    """Start a chain of tunlab relays in ``hosts`` (names or Host objects) of a started Mininet ``net``.

    Returns when every relay is ready (device up, sockets bound); raises TunlabError (after stopping what
    it started) otherwise."""
    from tunlab.lab.ledger import Ledger
    from tunlab.system.privileges import require_root

    require_root("add_relay_chain")
    if ready_timeout is None:
        ready_timeout = patient(10.0)
    names = [_host(net, h).name for h in hosts]
    ledger = Ledger.create({"backend": "mininet-api", "chain": names, "transport": transport})
    run_dir = ledger.dir
    chain = RelayChain(ledger.run_id, run_dir, [], ledger)
    try:
        chain.relays = plan_chain(net, hosts, transport=transport, overlay=overlay, port=port, dev=dev,
                                  hooks=hooks, mtu=mtu, run_dir=str(run_dir), log_level=log_level)
        for r in chain.relays:
            if r.role == "vnf" and "--vnf" in r.args and r.args[r.args.index("--vnf") + 1] == "kernel":
                _set_sysctls(r, VNF_SYSCTLS)
        waiting = [(r, _start(r, ledger)) for r in chain.relays]
        for r, fd in waiting:
            mininet_proc.read_ready_line(fd, r.proc, timeout=ready_timeout,
                                         what=f"relay in Mininet host {r.name}", log_file=r.log_file)
        _wait_connected(chain, transport, ready_timeout)
        ledger.update_meta(state="running")
    except BaseException:
        try:
            chain.stop()
        except TunlabError:
            pass
        raise
    return chain


def _start(r: ChainRelay, ledger: Any) -> int:
    """Start ``r``'s relay in its host; record it; return the read end of its readiness pipe."""
    from tunlab.lab.ledger import proc_start_time

    rfd, wfd = os.pipe()
    argv = [sys.executable, "-m", "tunlab", "relay", *r.args, "--ready-fd", str(wfd)]
    try:
        with open(f"{r.log_file}.stderr", "ab") as err:
            r.proc = mininet_proc.popen_in_pid(r.host.pid, argv, pass_fds=(wfd,), stdin=subprocess.DEVNULL,
                                               stdout=subprocess.DEVNULL, stderr=err,
                                               env=mininet_proc.tagged_env(ledger.run_id))
    except BaseException:
        os.close(rfd)
        raise
    finally:
        os.close(wfd)
    r.pid = r.proc.pid
    ledger.append({"op": "proc", "node": r.name, "pid": r.pid, "start": proc_start_time(r.pid),
                   "what": "relay", "host_pid": r.host.pid})
    return rfd


def _wait_connected(chain: RelayChain, transport: str, timeout: float) -> None:
    """Until every relay has both its neighbours connected (TCP connects after 'ready') and settled."""
    names = [r.name for r in chain.relays]
    hops = [Hop(x, y, transport) for a, b in zip(names, names[1:]) for x, y in ((a, b), (b, a))]

    def error(down: list[Hop]) -> TunlabError:
        return TunlabError(f"add_relay_chain: peers not connected after {timeout:.0f} s: "
                           f"{', '.join(f'{h.node}->{h.peer}' for h in down)}",
                           f"see the relay logs in {chain.run_dir}")

    wait_connected(chain.counters, hops, timeout, error=error)


def _set_sysctls(r: ChainRelay, values: Mapping[str, str]) -> None:
    keys = " ".join(values)
    old = r.host.cmd(f"sysctl -n {keys}").split()
    if len(old) == len(values):
        r.saved_sysctls = dict(zip(values, old))
    r.host.cmd("sysctl -q -w " + " ".join(f"{k}={v}" for k, v in values.items()))


def _restore_sysctls(r: ChainRelay) -> None:
    if not r.saved_sysctls:
        return
    shell = getattr(r.host, "shell", None)
    if shell is not None and shell.poll() is None:
        r.host.cmd("sysctl -q -w " + " ".join(f"{k}={v}" for k, v in r.saved_sysctls.items()))
    r.saved_sysctls = {}


__all__ = ["ChainError", "ChainRelay", "RelayChain", "add_relay_chain", "plan_chain"]
