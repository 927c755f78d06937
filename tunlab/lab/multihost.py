"""A lab across hosts, from the controller (issue 19, docs/multihost.md).

    inv = load_inventory("hosts.ini")
    with MultiHostLab(topology, inv) as lab:        # every host's part up, every hop (within and between) connected
        lab.node("sender").cmd_raises(["ping", "-c1", lab.node("receiver").overlay_ip])
        lab.placement                                  # node -> host
        lab.trips.per_host                             # ssh round trips so far, per host

Bring-up is three phases, each one request per host sent to every host before any reply is read (one SSH
round trip per host per phase, the hosts working at once): ``hello`` (version, clock, underlay MTU),
``up`` (the host's nodes, veths, uplinks and relays, recorded in its own ledger), ``connect`` (every hop
connected). The controller's own ledger (``/run/tunlab/<id>``, backend ``hosts``) records each host
before anything is asked of it; its remover runs ``tunlab hosts remove RUN`` on each (`tunlab down` and
`tunlab clean` here), and `tunlab clean` on a host removes that host's part on its own. When a phase fails
on one host, every host's part is taken down and the error names the host.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import logging
import os
import re
import selectors
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tunlab.errors import TunlabError
from tunlab.lab.lab import NodeCommands, RunHandle
from tunlab.lab.ledger import Entry, Ledger, Remover, remove_files
from tunlab.lab.remote import INSTALL_HINT, HostError, Remote, RoundTrips, local_version, on_all, skew_problem
from tunlab.model.graph import graph_data
from tunlab.model.hosts import HostPlan, Inventory, host_plan, lab_topology, place
from tunlab.model.plan import UnderlayLink
from tunlab.model.topology import Topology
from tunlab.system.privileges import require_root

log = logging.getLogger("tunlab.lab")
# a host's "the link's far host was never heard" (tunlab.lab.backends.hostpart.HostPartBackend.wait_underlay)
SILENT_UNDERLAY = re.compile(r"nothing from host \S+ \(\S+\) arrived at ")

AGENT_TIMEOUT = 120.0


def _pack(obj: Any) -> str:
    import pickle

    return base64.b64encode(pickle.dumps(obj)).decode()


#: what a host's answer may contain besides plain data (dicts, lists, tuples, bytes, str, numbers): a host
#: that was taken over must not run code on the controller by its answer
ANSWER_CLASSES = {("tunlab.traffic.decap", "Frame")}


def _unpack(text: str) -> Any:
    """A host's answer (frames, keys), unpickled with only :data:`ANSWER_CLASSES` allowed."""
    import io
    import pickle

    class Answer(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            if (module, name) not in ANSWER_CLASSES:
                raise TunlabError(f"a host answered with a {module}.{name} object, which a host never sends",
                                  "check that host: its tunlab may be another version, or not tunlab")
            return super().find_class(module, name)

    try:
        return Answer(io.BytesIO(base64.b64decode(text))).load()
    except TunlabError:
        raise
    except Exception as exc:  # a truncated or garbled answer
        raise TunlabError(f"a host's answer could not be read ({type(exc).__name__}: {exc})") from None


class AgentSession:
    """``tunlab hosts agent`` on one host over one ssh session; requests are counted as round trips."""

    def __init__(self, remote: Remote) -> None:
        self.remote = remote
        self.name = remote.name
        self.proc = remote.popen([*remote.host.tunlab_argv(), "hosts", "agent"])
        self._buf = b""
        self.pending = False
        # the agent's stderr (ssh's too) is read all along, so a chatty host never blocks on a full pipe;
        # its end is kept for the error message when the session ends
        self._err = b""
        self._err_reader = threading.Thread(target=self._read_err, name=f"tunlab-ssh-{self.name}", daemon=True)
        self._err_reader.start()

    def _read_err(self) -> None:
        assert self.proc.stderr is not None
        for chunk in iter(lambda: self.proc.stderr.read1(1 << 16), b""):  # type: ignore[union-attr]
            self._err = (self._err + chunk)[-(1 << 16):]

    def send(self, req: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.remote.trips.add(self.name)
        try:
            self.proc.stdin.write((json.dumps(req) + "\n").encode())
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            pass  # the answer (or its absence) says why
        self.pending = True

    def recv(self, timeout: float = AGENT_TIMEOUT) -> dict[str, Any]:
        """The answer to the last request; an error names the host."""
        self.pending = False
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            while b"\n" not in self._buf:
                left = deadline - time.monotonic()
                if left <= 0 or not sel.select(left):
                    raise HostError(f"host {self.name}: no answer from its tunlab within {timeout:.0f} s")
                chunk = os.read(fd, 1 << 20)
                if not chunk:
                    raise self._gone()
                self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        reply: dict[str, Any] = json.loads(line)
        if not reply.get("ok"):
            raise HostError(f"host {self.name}: {reply.get('error')}")
        return reply

    def request(self, req: dict[str, Any], timeout: float = AGENT_TIMEOUT) -> dict[str, Any]:
        self.send(req)
        return self.recv(timeout)

    def _gone(self) -> HostError:
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        self._err_reader.join(timeout=5)
        err = self._err.decode(errors="replace")
        rc = self.proc.returncode
        h = self.remote.host
        if rc == 255:
            return self.remote.unreachable(err)
        if rc == 127 or "not found" in err or "No such file" in err:
            return HostError(f"host {self.name}: tunlab missing (no command '{h.tunlab}'): "
                             + INSTALL_HINT.replace("VERSION", local_version()))
        last = [ln for ln in err.strip().splitlines() if ln.strip()]
        return HostError(f"host {self.name}: its tunlab ended (exit {rc})" + (f": {last[-1]}" if last else ""))

    def close(self) -> None:
        try:
            if self.proc.stdin:
                self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._err_reader.join(timeout=5)
        for f in (self.proc.stdout, self.proc.stderr):
            if f:
                f.close()


def phase(sessions: Sequence[AgentSession], reqs: dict[str, dict[str, Any]], timeout: float = AGENT_TIMEOUT
          ) -> tuple[dict[str, dict[str, Any]], list[HostError]]:
    """One request to each host named in ``reqs`` (all sent first), then every answer: (answers, errors)."""
    chosen = [s for s in sessions if s.name in reqs]
    for s in chosen:
        s.send(reqs[s.name])
    answers, errors = {}, []
    for s in chosen:
        try:
            answers[s.name] = s.recv(timeout)
        except HostError as exc:
            errors.append(exc)
    return answers, errors


class RemoteNode(NodeCommands):
    """A node of a lab across hosts: commands run in it through its host's agent (one round trip each)."""

    def __init__(self, lab: MultiHostLab, name: str, host: str, overlay_ip: str, overlay_dev: str,
                 netns_file: str) -> None:
        self._lab = lab
        self.name, self.host, self.overlay_ip, self.overlay_dev, self.netns_file = \
            name, host, overlay_ip, overlay_dev, netns_file

    def __repr__(self) -> str:
        return f"<RemoteNode {self.name} on {self.host}>"

    def _where(self) -> str:
        return f"node {self.name} on host {self.host}"

    def cmd_status(self, argv: Sequence[str] | str, *, timeout: float | None = 60,
                   **kw: Any) -> subprocess.CompletedProcess[str]:
        args = ["sh", "-c", argv] if isinstance(argv, str) else list(argv)
        r = self._lab.session(self.host).request({"cmd": "exec", "node": self.name, "argv": args, "timeout": timeout},
                                                 timeout=(timeout or 60) + 30)
        return subprocess.CompletedProcess(args, int(r["rc"]), r["stdout"], r["stderr"])


class MultiHostLab(RunHandle):
    """See the module docstring. ``keyed``: links between hosts sealed (default; the lab's key is made
    here and handed to every host over ssh)."""

    def __init__(self, topology: Topology, inventory: Inventory, *, keyed: bool = True,
                 placement: dict[str, str] | None = None, ready_timeout: float | None = None,
                 restart_relays: bool = False, seed: int | None = None) -> None:
        if seed is not None:  # the impairments' run seed travels to every host inside the topology
            topology = dataclasses.replace(topology, seed=seed)
        self.source_topology = topology
        self.inventory = inventory
        self.keyed = keyed
        self.placement = dict(placement) if placement else place(topology, inventory.names, inventory.path)
        self.ready_timeout = ready_timeout
        self.restart_relays = restart_relays
        self._reset()
        self.results_dir: Path | None = None  # (tunlab run sets it; logs stay on the hosts: docs/multihost.md)

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> MultiHostLab:
        require_root("bringing a lab across hosts up")
        try:
            return self._enter_once()
        except HostError as exc:
            if not SILENT_UNDERLAY.search(exc.message):
                raise
            # A link between hosts stayed silent although each host's part came up: seen on stand-in hosts in
            # about one full netns-tier run of three (one bring-up in a few hundred), cause not found yet (the
            # message carries what each host knew: forwarding, counters, neighbour, conntrack). One more
            # bring-up on a new run id (new ports, new connection-tracking entries); a real firewall fails
            # twice and is reported as the second failure.
            log.warning("%s; bringing the lab up once more, on new ports", exc.message)
            self._reset()
            return self._enter_once()

    def _reset(self) -> None:
        """The state of one bring-up, empty (at the start, and after a failed bring-up, which ``_failed``
        has already taken down)."""
        self.topology: Topology = self.source_topology
        self.trips = RoundTrips()
        self.timings: dict[str, float] = {}
        self.teardown_errors: list[str] = []
        self.final_counters: dict[str, Any] = {}
        self.host_plans: dict[str, HostPlan] = {}
        self._sessions: dict[str, AgentSession] = {}
        self._up: set[str] = set()  # hosts whose part was asked to come up (so must come down)
        self._ledger: Ledger | None = None
        self._run_dir: Path | None = None
        self._nodes: dict[str, RemoteNode] = {}
        self._links: list[UnderlayLink] = []
        self._detached = False

    def _enter_once(self) -> MultiHostLab:
        inv = self.inventory
        self._ledger = led = Ledger.create({"backend": "hosts", "topology": self.source_topology.name,
                                            "source": self.source_topology.source, "inventory": inv.path,
                                            "hosts": list(inv.names), "placement": self.placement})
        self._run_dir = led.dir
        used = set(self.placement.values())  # the hosts that get a part (recorded before they are asked)
        led.append(*({"op": "host", "host": dataclasses.asdict(h)} for h in inv.hosts if h.name in used))
        try:
            self._bring_up(led)
        except BaseException as exc:
            self._failed(exc, led.run_id)
            raise
        return self

    def _fail(self, errors: list[HostError]) -> None:
        if errors:
            first = errors[0]
            for e in errors[1:]:  # the others whole in the log; the error itself stays one line
                log.warning("%s", e.message)
            if len(errors) > 1:  # the others by host only: one line
                first.message += f" (also on {', '.join(e.message.split(':')[0] for e in errors[1:])})"
            raise first

    def _bring_up(self, led: Ledger) -> None:
        inv = self.inventory
        t0 = time.perf_counter()
        used = [h for h in inv.hosts if h.name in set(self.placement.values())]
        self._sessions = {h.name: AgentSession(Remote(h, self.trips)) for h in used}
        sessions = list(self._sessions.values())
        w0 = time.time()
        hello, errors = phase(sessions, {h.name: {"cmd": "hello", "underlay": h.underlay,
                                                  "peers": [o.underlay for o in used if o is not h]} for h in used})
        w1 = time.time()
        self._fail(errors)
        version = local_version()
        for name, r in hello.items():
            if r.get("version") != version:
                raise HostError(f"host {name}: tunlab {r.get('version')} there, {version} here: "
                                + INSTALL_HINT.replace("VERSION", version))
            skew = skew_problem(name, float(r.get("time") or 0), w0, w1)
            if skew:
                raise HostError(skew)
            for addr in r.get("unreached") or []:
                far = next(h for h in used if h.underlay == addr)
                raise HostError(f"host {name}: cannot reach host {far.name}'s underlay {addr} (ping)",
                                "check the inventory's underlay= and the network between the hosts: tunlab hosts check")
        mtus = {name: int(r["mtu"]) for name, r in hello.items() if r.get("mtu")}
        missing = [h for h in used if not hello[h.name].get("mtu")]
        if missing:
            h = missing[0]
            raise HostError(f"host {h.name}: underlay {h.underlay} is not an address of this host "
                            "(fix underlay= in the inventory)")
        self.timings["hello"] = time.perf_counter() - t0
        self.topology = t = lab_topology(self.source_topology, self.placement, mtus, keyed=self.keyed)
        self.host_plans = {h.name: host_plan(t, led.run_id, str(led.dir), self.placement, inv, h.name) for h in used}
        key = base64.b64encode(os.urandom(32)).decode() if t.keyed else None
        topo_b, inv_b = _pack(t), _pack(inv)
        controller = {"host": os.uname().nodename, "pid": os.getpid()}
        reqs = {h.name: {"cmd": "up", "run_id": led.run_id, "topology": topo_b, "inventory": inv_b,
                         "placement": self.placement, "host": h.name, "key": key, "controller": controller,
                         "ready_timeout": self.ready_timeout, "restart_relays": self.restart_relays}
                for h in used}
        self._up = set(reqs)
        t0 = time.perf_counter()
        ups, errors = phase(sessions, reqs)
        self._fail(errors)
        self.timings["up"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        _, errors = phase(sessions, {h.name: {"cmd": "connect", "timeout": self.ready_timeout} for h in used})
        self._fail([self._across(e) for e in errors])
        self.timings["connect"] = time.perf_counter() - t0
        for n in t.nodes:
            host = self.placement[n.name]
            np = self.host_plans[host].plan.node(n.name)
            self._nodes[n.name] = RemoteNode(self, n.name, host, np.overlay_ip, np.overlay_dev,
                                             ups[host]["nodes"][n.name])
        # each link as its b end sees it (where it is captured): a link between hosts comes from a's host
        for lk in t.links:
            b_host = self.placement[lk.b]
            self._links.append(next(x for x in self.host_plans[b_host].plan.links if x.name == lk.name))
        led.update_meta(state="running", graph=graph_data(t), nodes={
            n: {"host": node.host, "netns_file": node.netns_file, "overlay_ip": node.overlay_ip}
            for n, node in self._nodes.items()})

    @property
    def ledger(self) -> Ledger:
        if self._ledger is None:
            raise TunlabError("this lab is not up")
        return self._ledger

    def _across(self, exc: HostError) -> HostError:
        """A relay that did not connect to a peer on another host: say which underlay did not reach."""
        m = re.search(r"the relay of node (\w+) did not (?:connect to|settle its datapath with) ([\w, ]+?) in time",
                      exc.message)
        if m:
            here = self.placement.get(m.group(1))
            far = [p for p in m.group(2).split(", ") if self.placement.get(p) not in (None, here)]
            if far and here:
                h = self.inventory.host(self.placement[far[0]])
                exc.message = (f"host {here}: node {m.group(1)} got no answer from {far[0]} on host {h.name} "
                               f"over the underlay ({self.inventory.host(here).underlay} -> {h.underlay}): "
                               f"{exc.message.split(': ', 1)[-1]}")
                exc.hint = "do the hosts reach each other's underlay (UDP/TCP, any firewall)? tunlab hosts check"
        return exc

    def session(self, host: str) -> AgentSession:
        try:
            return self._sessions[host]
        except KeyError:
            raise TunlabError(f"host {host} has no part of this lab") from None

    def close(self) -> None:
        """Every host's part down (one round trip per host), then the controller's record. Safe twice."""
        led = self._ledger
        if led is None or self._detached:
            return
        self._ledger = None
        sessions = list(self._sessions.values())
        for s in sessions:  # a request sent without its answer read (a failed phase elsewhere): read it now
            if s.pending:
                try:
                    s.recv()
                except HostError:
                    pass
        logs = self.results_dir is not None
        answers, errors = phase(sessions, {name: {"cmd": "down", "logs": logs}
                                           for name in self._up if name in self._sessions})
        self.teardown_errors = [e.message for e in errors]
        for name, r in answers.items():
            self.teardown_errors += [f"host {name}: {e}" for e in r.get("errors", [])]
            self.final_counters.update(r.get("final_counters") or {})
            if logs and r.get("logs"):
                self._keep_logs(name, r["logs"], led.run_id)
        for s in sessions:
            s.close()
        if self.teardown_errors:  # hosts we could not reach: `tunlab clean` asks them again later
            return
        led.remove_dir()

    def _keep_logs(self, host: str, files: dict[str, str], run_id: str) -> None:
        """A host's relay logs, counters and ledger into ``results_dir/<run>/hosts/<host>/`` (the user's)."""
        from tunlab.system.privileges import make_user_dir, write_user_file

        assert self.results_dir is not None
        folder = make_user_dir(Path(self.results_dir) / run_id / "hosts" / host)
        for name, text in files.items():
            if "/" not in name and not name.startswith("."):
                write_user_file(folder / name, text)

    def detach(self) -> None:
        """Leave every host's part up after this process exits (`tunlab up --hosts`); `tunlab down` removes it."""
        _, errors = phase(list(self._sessions.values()), {name: {"cmd": "detach"} for name in self._sessions})
        self._fail(errors)
        for s in self._sessions.values():
            s.close()
        self._detached = True
        if self._ledger is not None:
            self._ledger.update_meta(state="up", owner=None)

    # ------------------------------------------------------------------ the running lab
    @property
    def underlay_links(self) -> list[UnderlayLink]:
        return list(self._links)

    def host_of(self, node: str) -> str:
        return self.placement[node]

    def _everywhere(self, cmd: str, **kw: Any) -> dict[str, dict[str, Any]]:
        answers, errors = phase(list(self._sessions.values()), {n: {"cmd": cmd, **kw} for n in self._sessions})
        self._fail(errors)
        return answers

    def relay_counters(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for r in self._everywhere("counters").values():
            out.update(r["counters"])
        return out

    def dead_relays(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for host, r in self._everywhere("dead").items():
            out.update({n: f"{how} (host {host})" for n, how in r["dead"].items()})
        return out

    def wait_connected(self, timeout: float | None = None, links: Any = None) -> None:
        self._everywhere("connect", timeout=timeout)

    def seal_keys(self) -> dict[int, bytes]:
        keys: dict[int, bytes] = {}
        for r in self._everywhere("keys").values():
            keys.update(_unpack(r["keys"]))
        return keys

    # captures for the per-hop checks: every host captures its own points, then sends the frames back
    def capture_start(self, points: dict[str, list[tuple[str, str, str, str]]]) -> None:
        _, errors = phase(list(self._sessions.values()), {h: {"cmd": "capture", "points": p} for h, p in points.items()})
        self._fail(errors)

    def send(self, probes: dict[str, list[tuple[str, bytes]]]) -> None:
        _, errors = phase(list(self._sessions.values()), {h: {"cmd": "send", "probes": _pack(p)} for h, p in probes.items()})
        self._fail(errors)

    def collect(self, hosts: Sequence[str], quiet: float, timeout: float) -> tuple[dict[str, Any], dict[str, Any]]:
        answers, errors = phase(list(self._sessions.values()),
                                {h: {"cmd": "collect", "quiet": quiet, "timeout": timeout} for h in hosts},
                                timeout=timeout + AGENT_TIMEOUT)
        self._fail(errors)
        frames: dict[str, Any] = {}
        stats: dict[str, Any] = {}
        for r in answers.values():
            frames.update(_unpack(r["frames"]))
            stats.update({k: tuple(v) for k, v in r["stats"].items()})
        return frames, stats


# ------------------------------------------------------------------------------------ removal by ledger


class HostsRecord:
    """The controller's record of a lab across hosts (backend ``hosts``): its ``host`` entries are removed by
    asking each host to remove its part of the run (`tunlab hosts remove RUN`, one round trip per host)."""

    name = "hosts"

    @classmethod
    def removers(cls, ledger: Ledger) -> dict[str, Remover]:
        from tunlab.model.hosts import Host

        def hosts(entries: Sequence[Entry]) -> None:
            remotes = [Remote(Host(**e["host"]), RoundTrips()) for e in entries if isinstance(e.get("host"), dict)]

            def one(r: Remote) -> None:
                res = r.run([*r.host.tunlab_argv(), "hosts", "remove", ledger.run_id], timeout=120)
                if res.returncode != 0:
                    last = [ln for ln in (res.stderr or res.stdout).strip().splitlines() if ln.strip()]
                    raise HostError(f"host {r.name}: {last[-1] if last else f'exit {res.returncode}'}")

            problems = [got.message if isinstance(got, TunlabError) else str(got)
                        for got in on_all(remotes, one) if isinstance(got, BaseException)]
            if problems:
                raise TunlabError("; ".join(problems))

        return {"host": hosts, "file": remove_files}
