"""The lab's relays: start every node's relay at once, wait until all are ready and connected, read their
counters, stop one on purpose. The lab's side of the relay contract (docs/ARCHITECTURE.md): it passes
command lines (from the plan) and reads the ready line and the control socket; it never imports the relay's
objects.

Relays are forked from one process that imported the relay once (:mod:`tunlab.lab.relayfork`, started
early so its imports overlap the namespace work), or, with ``TUNLAB_RELAY_SPAWN=exec``, started as one
``python -m tunlab relay`` per node through the backend. Either way each is recorded in the run's ledger
(pid and start time) and carries ``TUNLAB_RUN=<id>``.
"""

from __future__ import annotations

import json
import logging
import os
import selectors
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from tunlab.errors import TunlabError
from tunlab.lab.ledger import ENV_GROUP, ENV_TAG, Ledger
from tunlab.model.plan import LabPlan, NodePlan
from tunlab.system.procs import proc_start_time, process_alive
from tunlab.system.pace import patient

if TYPE_CHECKING:
    from tunlab.lab.backends.base import Backend

Counters = dict[str, dict[str, Any]]
log = logging.getLogger("tunlab.lab")
#: how often the lab looks at its relays (a death is noticed within this)
MONITOR_INTERVAL = 0.2


def _signame(sig: int) -> str:
    import signal

    try:
        return signal.Signals(sig).name
    except ValueError:
        return str(sig)


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    try:
        text = path.read_text()
    except OSError:
        return []
    out = []
    for line in text.splitlines():
        try:
            e = json.loads(line)
        except ValueError:
            continue
        if isinstance(e, dict):
            out.append(e)
    return out


def dead_relays(ledger: Ledger) -> dict[str, str]:
    """From a run's ledger alone (`tunlab ls`, any process): node -> how its relay ended, for every node
    whose latest relay is not running."""
    latest: dict[str, dict[str, Any]] = {}
    for e in ledger.entries():
        if e.get("op") == "proc" and e.get("role") == "relay" and isinstance(e.get("pid"), int):
            latest[str(e.get("node"))] = e
    out = {}
    for node, e in latest.items():
        if process_alive(int(e["pid"]), e.get("start")):
            continue
        how = "is gone"
        for x in reversed(_read_jsonl(ledger.dir / f"{node}.exits.jsonl")):
            if x.get("pid") == e["pid"]:
                how = str(x.get("status"))
                break
        out[node] = how
    return out


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


class Hop(NamedTuple):
    """One direction of a relay-to-relay hop: ``node``'s relay toward its peer ``peer``."""

    node: str
    peer: str
    transport: str


def hops_of(links: Iterable[Any]) -> list[Hop]:
    """Both directions of every underlay link (anything with ``a.node``, ``b.node`` and ``transport``)."""
    out = []
    for lk in links:
        out += [Hop(lk.a.node, lk.b.node, lk.transport), Hop(lk.b.node, lk.a.node, lk.transport)]
    return out


def hop_ready(counters: Counters, hop: Hop) -> bool:
    """Does ``hop.node``'s relay have ``hop.peer`` connected (TCP: the connection is made; UDP: it knows
    where to send) and, over UDP, settled its datapath (``--datapath auto``: the hello answered or given up
    on), so that packets cross as they will stay?"""
    c = counters.get(hop.node) or {}
    peer = (c.get("peers") or {}).get(hop.peer) or {}
    if not peer.get("connected"):
        return False
    if hop.transport == "tcp":
        return True
    state = (((c.get("datapath") or {}).get("peers") or {}).get(hop.peer) or {}).get("negotiation")
    return state != "probing"


def wait_connected(counters: Callable[[], Counters], hops: Sequence[Hop], timeout: float, *,
                   error: Callable[[list[Hop]], TunlabError] | None = None) -> None:
    """Poll the relays' counters until every hop is ready (:func:`hop_ready`); the one "wait until the
    relays are connected" of tunlab (lab bring-up, scenario checks, relay chains in Mininet networks)."""
    deadline = time.monotonic() + timeout
    while True:
        now = counters()
        down = [h for h in hops if not hop_ready(now, h)]
        if not down:
            return
        if time.monotonic() > deadline:
            if error is not None:
                raise error(down)
            what = "TCP connection not up" if down[0].transport == "tcp" else "datapath not negotiated"
            names = ", ".join(f"{h.node}->{h.peer}" for h in down)
            raise TunlabError(f"relay {what} after {timeout:.0f} s on {names}")
        time.sleep(0.01)  # the poll interval of a readiness check with a deadline


class RelaySupervisor:
    """The relays of one lab: ``prepare()`` (fork server, early), ``start()``, ``wait_connected()``,
    ``counters()``, ``kill()``; ``release()`` and ``reap()`` around the ledger replay at teardown."""

    #: "fork": relays forked from one process that imported the relay once (fast; see relayfork.py);
    #: "exec": one `python -m tunlab relay` per node. $TUNLAB_RELAY_SPAWN overrides.
    spawn_mode = "fork"

    def __init__(self, plan: LabPlan, ledger: Ledger, backend: Backend, *, restart: bool = False) -> None:
        self.plan = plan
        self.ledger = ledger
        self.backend = backend
        #: restart a relay that dies abnormally, with its recorded command line (forked relays only; the
        #: fork server does it, so it goes on after this process exits: `tunlab up`)
        self.restart = restart
        self.relays: dict[str, RelayProcess] = {}
        self.dead: dict[str, str] = {}      # node -> how its relay ended (noticed by the monitor)
        self.restarted: dict[str, int] = {}  # node -> restarts seen
        self._monitor: threading.Thread | None = None
        self._monitor_stop = threading.Event()
        self._noticed: dict[tuple[str, int], float] = {}
        self._fork_server: Any = None
        self._fork_reaper: Any = None  # the fork server that started the relays, reaped at teardown

    def netns_file(self, node: str) -> str:
        return self.backend.netns_file(node)

    def env(self) -> dict[str, str]:
        return {**os.environ, ENV_TAG: self.ledger.run_id}

    def prepare(self) -> None:
        """Start the fork server now, so that its imports overlap the backend's namespace work."""
        self._fork_server = self._start_fork_server()

    def relay_args(self, node: NodePlan) -> list[str]:
        """The plan's relay arguments, plus the control socket's group when $TUNLAB_GROUP is set."""
        group = os.environ.get(ENV_GROUP, "").strip()
        return [*node.relay_args, *(["--control-group", group] if group else [])]

    def relay_argv(self, node: NodePlan, ready_fd: int) -> list[str]:
        return [sys.executable, "-m", "tunlab", "relay", *self.relay_args(node), "--ready-fd", str(ready_fd)]

    def start(self, timeout: float | None = None) -> dict[str, RelayProcess]:
        """Start every node's relay at once and wait for all their readiness lines together.

        A relay that exits, reports an error or is not ready by the deadline raises RelayStartError
        naming the node and quoting its output (the caller tears the lab down)."""
        nodes = self.plan.nodes
        deadline = time.monotonic() + (timeout if timeout is not None else patient(10.0 + 0.1 * len(nodes)))
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
                        pid, start = server.spawn(self.relay_args(n), self.netns_file(n.name), w, out.fileno(),
                                                  {ENV_TAG: self.ledger.run_id}, node=n.name,
                                                  run_dir=str(self.plan.run_dir), out_path=self._out_path(n),
                                                  restart=self.restart)
                        forked.append({"op": "proc", "node": n.name, "role": "relay", "pid": pid, "start": start,
                                       "argv": [sys.executable, "-m", "tunlab", "relay", *self.relay_args(n)]})
                        self.relays[n.name] = RelayProcess(n.name, pid, start)
                    else:
                        p = self.backend.spawn(n.name, self.relay_argv(n, w), role="relay", pass_fds=(w,),
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
            self._start_monitor()
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
        if (os.environ.get("TUNLAB_RELAY_SPAWN") or self.spawn_mode) != "fork":
            return None
        from tunlab.lab.relayfork import RelayForkServer

        server = RelayForkServer(self.env(), os.path.join(self.plan.run_dir, "relayfork.log"))
        self.ledger.append({"op": "proc", "role": "relay-fork-server", "pid": server.proc.pid,
                            "start": proc_start_time(server.proc.pid)})
        return server

    def wait_connected(self, timeout: float | None = None, links: Iterable[Any] | None = None) -> None:
        """Until every relay has its peers connected and its UDP datapaths settled (all the plan's links,
        or ``links``); a relay that is not names itself and quotes its log."""
        mine = {n.name for n in self.plan.nodes}  # a host's part of a lab across hosts: its own relays' hops
        hops = [h for h in hops_of(self.plan.links if links is None else links) if h.node in mine]
        if not hops:
            return
        if timeout is None:
            timeout = patient(10.0 + 0.05 * len({h.node for h in hops}))

        def error(down: list[Hop]) -> TunlabError:
            n = self.plan.node(down[0].node)
            peers = ", ".join(sorted({h.peer for h in down if h.node == n.name}))
            what = "connect to" if down[0].transport == "tcp" else "settle its datapath with"
            return RelayStartError(f"the relay of node {n.name} did not {what} {peers} in time: "
                                   f"{tail([self._out_path(n), n.log_file]) or 'no output'}")

        nodes = {h.node for h in hops} | {h.peer for h in hops}

        def counters() -> Counters:
            # a relay of these hops that died will not connect: say so now, with how it ended
            dead = {n: how for n, how in self.poll().items() if n in nodes}
            if dead:
                raise RelayStartError("; ".join(f"the relay of node {n} {how}" for n, how in sorted(dead.items())))
            return self.counters()

        wait_connected(counters, hops, timeout, error=error)

    def counters(self) -> Counters:
        """Every relay's counters now, through its control socket (nodes whose relay is gone: absent)."""
        from tunlab.relay.control import query_stats

        out = {}
        for name, rp in list(self.relays.items()):
            if rp.alive():
                try:
                    out[name] = query_stats(self.plan.node(name).control)
                except TunlabError:
                    if rp.wait(1.0):  # it died between the two looks: absent (poll() records how)
                        continue
                    raise
        return out

    # ------------------------------------------------------------------ supervision
    def _start_monitor(self) -> None:
        """A thread that notices a relay's death within MONITOR_INTERVAL and logs it with its exit status."""
        if self._monitor is not None:
            return
        self._monitor_stop.clear()

        def watch() -> None:
            while not self._monitor_stop.wait(MONITOR_INTERVAL):
                try:
                    self.poll()
                except Exception as exc:  # noqa: BLE001 - the watcher must not die of a bad file
                    log.debug("relay monitor: %s", exc)

        self._monitor = threading.Thread(target=watch, name=f"tunlab-relays-{self.ledger.run_id}", daemon=True)
        self._monitor.start()

    def poll(self) -> dict[str, str]:
        """Look at every relay now: a relay that died is recorded in :attr:`dead` (node -> how it ended) and
        logged; one the fork server restarted (``restart``) is followed to its new pid."""
        for name, rp in list(self.relays.items()):
            if name in self.dead or rp.alive():
                continue
            newer = self._restarted_as(name, rp.pid)
            if newer is not None:
                self.relays[name] = newer
                self.restarted[name] = self.restarted.get(name, 0) + 1
                log.warning("lab %s: the relay of node %s (pid %d) %s; restarted as pid %d", self.ledger.run_id,
                            name, rp.pid, self._how_it_ended(name, rp, wait=0.0), newer.pid)
                continue
            if self.restart and self._restart_pending(name, rp.pid):
                continue  # the fork server is about to restart it
            how = self._how_it_ended(name, rp)
            self.dead[name] = how
            log.warning("lab %s: the relay of node %s (pid %d) %s", self.ledger.run_id, name, rp.pid, how)
        return dict(self.dead)

    def deaths(self) -> dict[str, str]:
        """Node -> "the relay of node X (pid N) killed by signal 9 (SIGKILL)" for every dead relay, now."""
        return {n: f"the relay of node {n} (pid {self.relays[n].pid}) {how}" for n, how in self.poll().items()}

    def _how_it_ended(self, node: str, rp: RelayProcess, wait: float = 1.0) -> str:
        if rp.popen is not None:
            code = rp.popen.poll()
            if code is None:
                return "is gone"
            return f"killed by signal {-code} ({_signame(-code)})" if code < 0 else f"exited with status {code}"
        deadline = time.monotonic() + wait  # the fork server reaps it and writes how it ended
        while True:
            for e in reversed(_read_jsonl(Path(self.plan.run_dir) / f"{node}.exits.jsonl")):
                if e.get("pid") == rp.pid:
                    return str(e.get("status"))
            if time.monotonic() >= deadline:
                return "is gone (exit status unknown)"
            time.sleep(0.02)

    def _restarted_as(self, node: str, pid: int) -> RelayProcess | None:
        for e in reversed(self.ledger.entries()):
            if e.get("op") == "proc" and e.get("role") == "relay" and e.get("node") == node \
                    and e.get("restart_of") == pid and isinstance(e.get("pid"), int):
                return RelayProcess(node, int(e["pid"]), e.get("start"))
        return None

    def _restart_pending(self, node: str, pid: int) -> bool:
        """Restart on: may the fork server still be restarting ``pid`` (for up to 2 s after we noticed)?"""
        first = self._noticed.setdefault((node, pid), time.monotonic())
        if time.monotonic() - first > 2.0:
            return False
        for e in _read_jsonl(Path(self.plan.run_dir) / f"{node}.exits.jsonl"):
            if e.get("pid") == pid:
                return not e.get("clean") and "gave_up" not in e
        return True

    def stop_monitor(self) -> None:
        self._monitor_stop.set()
        if self._monitor is not None:
            self._monitor.join(timeout=2)
            self._monitor = None

    def kill(self, node: str) -> None:
        """SIGKILL the relay of ``node`` (for negative tests) and wait until it is gone."""
        import signal

        rp = self.relays.get(node)
        if rp is None:
            raise TunlabError(f"node '{node}' has no relay")
        if process_alive(rp.pid, rp.start):
            os.kill(rp.pid, signal.SIGKILL)
        if not rp.wait(10):
            raise TunlabError(f"the relay of node '{node}' (pid {rp.pid}) survived SIGKILL for 10 s")

    def release(self) -> None:
        """Before the ledger replay: the monitor stops; a fork server started but never used (bring-up
        failed) is closed."""
        self.stop_monitor()
        if self._fork_server is not None:
            self._fork_server.close()
            self._fork_reaper = self._fork_reaper or self._fork_server
            self._fork_server = None

    def reap(self) -> None:
        """After the ledger replay stopped the relays: the fork server exits once they are gone; reap it."""
        reaper, self._fork_reaper = self._fork_reaper, None
        if reaper is not None:
            reaper.reap()

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
