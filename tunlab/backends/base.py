"""The backend interface: what a lab needs from the thing that makes nodes and links.

A backend gets a :class:`tunlab.plan.LabPlan` (names, addresses, relay command lines: all decided) and the
run's :class:`tunlab.ledger.Ledger`. It implements four steps and the removers for its own ledger entries:

1. :meth:`Backend.create_nodes` -- one network namespace per node (named, or a process's), quiet
   (no IPv6 on lab links), forwarding on for kernel VNFs, rp_filter and send_redirects off, lo up,
   and the node's persistent TUN device (``plan.overlay_dev``; relays open it with ``--attach``);
2. :meth:`Backend.create_links` -- the underlay veth pairs (``plan.links``);
3. :meth:`Backend.configure_nodes` -- addresses, MTU, link state, tx checksum offload off on veths (kept on
   UDP hops of the fast datapath: ``nsutil.gso_links``), TUN address and MTU, VNF routes and nftables rulesets;
4. :meth:`Backend.netns_file` -- the path that enters a node (``/run/netns/NAME`` or ``/proc/PID/ns/net``).

Every step appends ledger entries *before* it creates anything; :meth:`Backend.removers` maps each
entry ``op`` it writes to a function that removes such entries (given in reverse order, grouped).
The base class supplies the rest: running commands in nodes (``nsenter``), starting every relay at once
and waiting on all their ``--ready-fd`` pipes together, and teardown by ledger replay.
"""

from __future__ import annotations

import json
import os
import selectors
import subprocess
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from tunlab.errors import TunlabError
from tunlab.ledger import (
    ENV_TAG, Ledger, Remover, proc_start_time, process_alive, remove_files, remove_processes, replay,
)
from tunlab.plan import LabPlan, NodePlan


class RelayStartError(TunlabError):
    """A relay died or did not become ready; the message names the node and quotes its log."""


@dataclass
class RelayProcess:
    node: str
    pid: int
    start: int | None
    popen: subprocess.Popen[bytes] | None = None  # None when forked by the relay fork server
    ready: dict[str, Any] = field(default_factory=dict)

    def alive(self) -> bool:
        if self.popen is not None:
            return self.popen.poll() is None
        return process_alive(self.pid, self.start)

    def wait(self, timeout: float) -> bool:
        """Wait until the relay has exited; False if it still runs after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while self.alive():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.005)
        return True


def tail(paths: Sequence[str | Path], lines: int = 6) -> str:
    """The last lines of the given files, joined with ' | ' (one line for an error message)."""
    out: list[str] = []
    for p in paths:
        try:
            out += [ln.strip() for ln in Path(p).read_text(errors="replace").splitlines() if ln.strip()]
        except OSError:
            pass
    return " | ".join(out[-lines:])


class Backend(ABC):
    name: ClassVar[str] = "?"
    #: "fork": relays forked from one process that imported the relay once (fast; see relayfork.py);
    #: "exec": one `python -m tunlab relay` per node. $TUNLAB_RELAY_SPAWN overrides.
    relay_spawn: ClassVar[str] = "fork"

    def __init__(self, plan: LabPlan, ledger: Ledger) -> None:
        self.plan = plan
        self.ledger = ledger
        self.relays: dict[str, RelayProcess] = {}
        self.timings: dict[str, float] = {}
        self._fork_server: Any = None
        self._fork_reaper: Any = None  # the fork server that started the relays, reaped at teardown

    # ------------------------------------------------------------------ what a backend implements
    @abstractmethod
    def create_nodes(self) -> None:
        """Namespaces (with sysctls, lo, TUN) for every node in ``self.plan.nodes``."""

    @abstractmethod
    def create_links(self) -> None:
        """The veth pairs of ``self.plan.links``, each end directly in its node's namespace."""

    @abstractmethod
    def configure_nodes(self) -> None:
        """Addresses, MTU and state of every interface; TUN address; routes and nftables rules."""


    def apply_nft(self, nodes: Sequence[NodePlan]) -> None:
        """Load each node's nftables ruleset inside its namespace (all at once); name the first failure."""
        procs = []
        for n in nodes:
            p = subprocess.Popen(["nsenter", f"--net={self.netns_file(n.name)}", "--", "nft", "-f", "-"],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            procs.append((n, p))
        failed = []
        for n, p in procs:
            out, _ = p.communicate((n.nft or "").encode(), timeout=30)
            if p.returncode != 0:
                failed.append((n, out.decode(errors="replace").strip().replace("\n", " | ")))
        if failed:
            n, msg = failed[0]
            raise TunlabError(f"node {n.name} field 'nft': nft rejected the ruleset: {msg[:400]}",
                              "check the ruleset with `nft -c -f FILE`")

    @abstractmethod
    def netns_file(self, node: str) -> str:
        """A path to open to enter ``node``'s network namespace."""

    @classmethod
    def removers(cls, ledger: Ledger) -> dict[str, Remover]:
        """op -> remover, for every ledger entry this backend writes (also used by `tunlab clean`)."""
        return {"proc": remove_processes(ledger.run_id), "file": remove_files}

    # ------------------------------------------------------------------ shared machinery
    def bring_up(self, ready_timeout: float | None = None) -> None:
        """The four steps in order, then the relays; ``self.timings`` records seconds per step. The relay
        fork server starts first so that its imports overlap the namespace work."""
        self._fork_server = self._start_fork_server()
        steps: list[tuple[str, Callable[[], object]]] = [
            ("nodes", self.create_nodes), ("links", self.create_links), ("configure", self.configure_nodes),
            ("relays", lambda: self.start_relays(ready_timeout)), ("connect", self.wait_connected)]
        for name, step in steps:
            t0 = time.perf_counter()
            step()
            self.timings[name] = time.perf_counter() - t0

    def env(self) -> dict[str, str]:
        return {**os.environ, ENV_TAG: self.ledger.run_id}

    def spawn(self, node: str, argv: Sequence[str], *, role: str = "cmd", **kw: Any) -> subprocess.Popen[Any]:
        """Start ``argv`` inside ``node``, tagged with this run and recorded in the ledger (pid, start)."""
        kw["env"] = {**(kw.get("env") or os.environ), ENV_TAG: self.ledger.run_id}
        kw.setdefault("start_new_session", True)
        p = subprocess.Popen(["nsenter", f"--net={self.netns_file(node)}", "--", *argv], **kw)
        # nsenter execs the command: this pid is the command's pid
        self.ledger.append({"op": "proc", "node": node, "role": role, "pid": p.pid,
                            "start": proc_start_time(p.pid), "argv0": argv[0]})
        return p

    def relay_argv(self, node: NodePlan, ready_fd: int) -> list[str]:
        return [sys.executable, "-m", "tunlab", "relay", *node.relay_args, "--ready-fd", str(ready_fd)]

    def start_relays(self, timeout: float | None = None) -> dict[str, RelayProcess]:
        """Start every node's relay at once and wait for all their readiness lines together.

        A relay that exits, reports an error or is not ready by the deadline raises RelayStartError
        naming the node and quoting its output (the caller tears the lab down)."""
        nodes = self.plan.nodes
        deadline = time.monotonic() + (timeout if timeout is not None else 10.0 + 0.1 * len(nodes))
        pending: dict[int, NodePlan] = {}
        sel = selectors.DefaultSelector()
        server, self._fork_server = self._fork_server or self._start_fork_server(), None
        self._fork_reaper = server
        # forked relays are recorded in one fsync'd batch (a crash before it: they carry TUNLAB_RUN=<id>)
        forked: list[dict[str, Any]] = []
        try:
            for n in nodes:
                r, w = os.pipe()
                os.set_blocking(r, False)
                out = open(self._out_path(n), "wb")
                try:
                    if server is not None:
                        pid, start = server.spawn(list(n.relay_args), self.netns_file(n.name), w, out.fileno(),
                                                  {ENV_TAG: self.ledger.run_id})
                        forked.append({"op": "proc", "node": n.name, "role": "relay", "pid": pid, "start": start})
                        self.relays[n.name] = RelayProcess(n.name, pid, start)
                    else:
                        p = self.spawn(n.name, self.relay_argv(n, w), role="relay", pass_fds=(w,),
                                       stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
                        self.relays[n.name] = RelayProcess(n.name, p.pid, proc_start_time(p.pid), p)
                finally:
                    os.close(w)
                    out.close()
                pending[r] = n
                sel.register(r, selectors.EVENT_READ, bytearray())
            self.ledger.append(*forked)
            forked.clear()
            if server is not None:
                server.close()
                server = None
            while pending:
                left = deadline - time.monotonic()
                if left <= 0:
                    names = sorted(n.name for n in pending.values())
                    first = self.plan.node(names[0])
                    raise RelayStartError(
                        f"the relay of node {', '.join(names)} was not ready in time; "
                        f"{first.name}: {tail([self._out_path(first), first.log_file]) or 'no output'}")
                for key, _ in sel.select(min(left, 0.5)):
                    fd = int(key.fd)  # type: ignore[arg-type]
                    buf: bytearray = key.data
                    chunk = os.read(fd, 4096)
                    buf += chunk
                    if chunk and b"\n" not in buf:
                        continue
                    node = pending.pop(fd)
                    sel.unregister(fd)
                    os.close(fd)
                    self._check_ready(node, bytes(buf))
        finally:
            self.ledger.append(*forked)
            forked.clear()
            if server is not None:
                server.close()
            for fd in list(pending):
                sel.unregister(fd)
                os.close(fd)
            sel.close()
        return self.relays

    def _start_fork_server(self) -> Any:
        if (os.environ.get("TUNLAB_RELAY_SPAWN") or self.relay_spawn) != "fork":
            return None
        from tunlab.backends.relayfork import RelayForkServer

        server = RelayForkServer(self.env(), os.path.join(self.plan.run_dir, "relayfork.log"))
        self.ledger.append({"op": "proc", "role": "relay-fork-server", "pid": server.proc.pid,
                            "start": proc_start_time(server.proc.pid)})
        return server

    def teardown(self) -> list[str]:
        """Remove everything the ledger records, newest first; one line per problem."""
        if self._fork_server is not None:  # started, but bring-up failed before the relays
            self._fork_server.close()
            self._fork_reaper = self._fork_reaper or self._fork_server
            self._fork_server = None
        try:
            return replay(self.ledger, self.removers(self.ledger))
        finally:
            # the fork server exits once its relays are gone (the replay stopped them): reap it
            reaper, self._fork_reaper = self._fork_reaper, None
            if reaper is not None:
                reaper.reap()

    def wait_connected(self, timeout: float | None = None) -> None:
        """TCP hops: wait until every relay reports every peer connected (UDP needs no handshake)."""
        tcp = [n for n in self.plan.nodes if any(i.link.transport == "tcp" for i in n.ifaces)]
        if not tcp:
            return
        from tunlab.relay.control import query_stats

        deadline = time.monotonic() + (timeout if timeout is not None else 10.0 + 0.05 * len(tcp))
        while tcp:
            waiting = []
            for n in tcp:
                peers = query_stats(n.control)["peers"]
                if not all(p.get("connected") for p in peers.values()):
                    waiting.append(n)
            tcp = waiting
            if tcp and time.monotonic() > deadline:
                n = tcp[0]
                down = [k for k, p in query_stats(n.control)["peers"].items() if not p.get("connected")]
                raise RelayStartError(f"the relay of node {n.name} did not connect to {', '.join(down)} in time: "
                                      f"{tail([self._out_path(n), n.log_file]) or 'no output'}")
            if tcp:
                time.sleep(0.01)

    def _check_ready(self, node: NodePlan, line: bytes) -> None:
        try:
            info = json.loads(line.decode(errors="replace").splitlines()[0]) if line.strip() else {}
        except ValueError:
            info = {}
        if isinstance(info, dict) and info.get("ready") is True:
            self.relays[node.name].ready = info
            return
        rp = self.relays[node.name]
        exited = rp.wait(2.0)
        why = info.get("error") if isinstance(info, dict) and info.get("error") else None
        code = rp.popen.returncode if rp.popen is not None else None
        status = f"exited with {code}" if code is not None else "exited" if exited else "failed"
        raise RelayStartError(
            f"the relay of node {node.name} {status} before it was ready: "
            f"{why or tail([self._out_path(node), node.log_file]) or 'no output'}")

    def _out_path(self, node: NodePlan) -> str:
        return f"{self.plan.run_dir}/{node.name}.out"
