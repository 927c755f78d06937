"""The lab: a context manager that brings a topology up on a backend and takes it down again.

    with Lab(topology) as lab:            # up, every relay ready
        lab.node("sender").cmd_raises(["ping", "-c1", lab.node("receiver").overlay_ip])
        lab.relay_counters()              # {node: counters JSON}
    # everything the run recorded is gone; lab.final_counters holds the relays' last counters

See docs/ARCHITECTURE.md (Lab API contract).
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import shutil
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any

from tunlab.lab.backends import backend_class
from tunlab.lab.backends.base import Backend
from tunlab.errors import TunlabError
from tunlab.lab.ledger import ENV_TAG, Ledger
from tunlab.lab.relays import RelaySupervisor
from tunlab.model.topology import Topology
from tunlab.model.graph import graph_data
from tunlab.model.plan import PSK_FILE, LabPlan, NodePlan, UnderlayLink, build_plan

log = logging.getLogger("tunlab.lab")
from tunlab.system.privileges import make_user_dir, open_user_file, require_root

Argv = Sequence[str] | str


def _argv(cmd: Argv) -> list[str]:
    return ["sh", "-c", cmd] if isinstance(cmd, str) else list(cmd)


class NodeCommands:
    """``cmd_raises``/``cmd_nostatus`` over a ``cmd_status`` (a node here, or on another host)."""

    name: str

    def cmd_status(self, argv: Argv, **kw: Any) -> subprocess.CompletedProcess[str]:
        raise NotImplementedError

    def _where(self) -> str:
        return f"node {self.name}"

    def cmd_raises(self, argv: Argv, **kw: Any) -> str:
        """Run to completion and return stdout; a non-zero exit raises TunlabError naming node and command."""
        res = self.cmd_status(argv, **kw)
        if res.returncode != 0:
            cmd = argv if isinstance(argv, str) else shlex.join(argv)
            err = (res.stderr or res.stdout or "").strip().splitlines()
            raise TunlabError(f"{self._where()}: `{cmd}` exited with {res.returncode}"
                              + (f": {err[-1]}" if err else ""))
        return str(res.stdout)

    def cmd_nostatus(self, argv: Argv, **kw: Any) -> str:
        """Run to completion and return stdout and stderr, whatever the exit code."""
        res = self.cmd_status(argv, **kw)
        return str(res.stdout) + str(res.stderr or "")


class Node(NodeCommands):
    """A node of a running lab: run commands in its network namespace."""

    def __init__(self, lab: Lab, plan: NodePlan) -> None:
        self._lab = lab
        self.plan = plan
        self.name = plan.name
        self.overlay_dev = plan.overlay_dev
        self.overlay_ip = plan.overlay_ip

    def __repr__(self) -> str:
        return f"<Node {self.name} in {self.netns_file}>"

    @property
    def netns_file(self) -> str:
        return self._lab.backend.netns_file(self.name)

    def _prefix(self) -> list[str]:
        return ["nsenter", f"--net={self.netns_file}", "--"]

    def cmd_status(self, argv: Argv, *, timeout: float | None = 60, **kw: Any) -> subprocess.CompletedProcess[str]:
        """Run to completion; never raises on the exit code (stdout/stderr captured as text)."""
        kw.setdefault("capture_output", True)
        kw.setdefault("text", True)
        kw.setdefault("stdin", subprocess.DEVNULL)
        kw["env"] = {**(kw.get("env") or os.environ), ENV_TAG: self._lab.run_id}  # anything it leaves is the lab's
        return subprocess.run([*self._prefix(), *_argv(argv)], timeout=timeout, check=False, **kw)

    def popen(self, argv: Argv, **kw: Any) -> subprocess.Popen[Any]:
        """Start a process in the node; it is recorded in the run's ledger and stopped at teardown."""
        return self._lab.backend.spawn(self.name, _argv(argv), role="cmd", **kw)

    @contextmanager
    def entered(self) -> Iterator[None]:
        """Run the body with the calling thread inside this node's network namespace."""
        from tunlab.system.netns import entered

        with entered(self.netns_file):
            yield


class RunHandle:
    """What every running lab answers by its run directory and its nodes (here, or across hosts)."""

    _run_dir: Path | None
    _nodes: dict[str, Any]
    teardown_errors: list[str]

    def close(self) -> None:
        raise NotImplementedError

    def _failed(self, exc: BaseException, run_id: str) -> None:
        """Bring-up failed: take down what was made; the error names the run (and what teardown left)."""
        self.close()
        if isinstance(exc, TunlabError):
            exc.message = f"lab {run_id}: {exc.message}"
            if self.teardown_errors:
                exc.message += f" (teardown: {'; '.join(self.teardown_errors[:3])})"

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.close()
        if self.teardown_errors and et is None:
            raise TunlabError(f"lab {self.run_id}: teardown left {len(self.teardown_errors)} problem(s): "
                              f"{'; '.join(self.teardown_errors[:3])}", f"sudo tunlab clean {self.run_id}")


    @property
    def run_id(self) -> str:
        """The run's id (still readable after teardown)."""
        if self._run_dir is None:
            raise TunlabError("this lab was never brought up")
        return self._run_dir.name

    @property
    def run_dir(self) -> Path:
        """The run directory (/run/tunlab/<id>); it is removed at teardown."""
        if self._run_dir is None:
            raise TunlabError("this lab was never brought up")
        return self._run_dir

    @property
    def nodes(self) -> dict[str, Any]:
        return dict(self._nodes)

    def node(self, name: str) -> Any:
        try:
            return self._nodes[name]
        except KeyError:
            raise TunlabError(f"there is no node '{name}' in this lab",
                              f"nodes: {', '.join(self._nodes)}") from None


class Lab(RunHandle):
    """See the module docstring. ``backend``: "netns" (default) or "mininet"; ``results_dir``: where relay
    logs and counters are copied at teardown (owned by the invoking user under sudo)."""

    def __init__(self, topology: Topology, backend: str = "netns", results_dir: str | os.PathLike[str] | None = None,
                 *, ready_timeout: float | None = None, restart_relays: bool = False, seed: int | None = None,
                 connect: bool = True) -> None:
        if not isinstance(topology, Topology):
            raise TunlabError(f"Lab needs a tunlab.model.Topology, not {type(topology).__name__}")
        self.topology = topology
        self.backend_name = backend
        self.results_dir = Path(results_dir) if results_dir is not None else None
        self.ready_timeout = ready_timeout
        #: a relay that dies abnormally is started again with its recorded command line (off by default,
        #: so that a check sees the death; `tunlab up` turns it on for labs that run for long)
        self.restart_relays = restart_relays
        #: the run seed of the links' impairments (None: the topology's, else one per run; see plan.seed)
        self.seed = seed
        #: wait for every hop connected before returning (a host's part of a lab across hosts waits later,
        #: once every host's relays run: tunlab.lab.hostpart)
        self.connect = connect
        self.final_counters: dict[str, dict[str, Any]] = {}
        self.teardown_errors: list[str] = []
        self._ledger: Ledger | None = None
        self._run_dir: Path | None = None
        self._backend: Backend | None = None
        self._relays: RelaySupervisor | None = None
        self.timings: dict[str, float] = {}
        self._plan: LabPlan | None = None
        self._nodes: dict[str, Node] = {}
        self._detached = False
        self._nsh_tables: dict[str, dict[str, Any]] | None = None

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> Lab:
        require_root("bringing a lab up")
        cls = backend_class(self.backend_name)
        t = self.topology = _netem_fallback(self.topology)
        self._ledger = led = self._create_ledger({"backend": self.backend_name, "topology": t.name,
                                                  "source": t.source, "results_dir": str(self.results_dir or "")})
        self._run_dir = led.dir
        try:
            self._plan = plan = self._make_plan(led)
            self.seed = plan.seed
            nodes = {n.name: {"netns": n.netns, "role": n.role, "overlay_dev": n.overlay_dev,
                              "overlay_ip": n.overlay_ip, "control": n.control} for n in plan.nodes}
            led.update_meta(nodes=nodes, graph=graph_data(t), seed=plan.seed)  # `tunlab graph RUN` draws it
            if t.keyed:  # one key for the lab's links, root-only, made before any relay reads it
                fd = os.open(led.dir / PSK_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
                try:
                    os.write(fd, self._key())
                finally:
                    os.close(fd)
            for n in plan.nodes:  # NSH mode: each relay's tables, root-only like the rest of the run dir
                if n.nsh_file and n.nsh_json:
                    fd = os.open(n.nsh_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
                    try:
                        os.write(fd, n.nsh_json.encode())
                    finally:
                        os.close(fd)
            self._backend = backend = self._make_backend(cls, plan, led)
            self._relays = relays = RelaySupervisor(plan, led, backend, restart=self.restart_relays)
            self._nodes = {n.name: Node(self, n) for n in plan.nodes}
            relays.prepare()  # the relay fork server's imports overlap the namespace work
            backend.build()
            self.timings = dict(backend.timings)
            steps: list[tuple[str, Any]] = [("relays", lambda: relays.start(self.ready_timeout))]
            if self.connect:
                steps.append(("connect", relays.wait_connected))
            for step, action in steps:
                t0 = time.perf_counter()
                action()
                self.timings[step] = time.perf_counter() - t0
            for name, info in nodes.items():
                info["netns_file"] = self._backend.netns_file(name)
            led.update_meta(state="running", nodes=nodes)
        except BaseException as exc:
            self._failed(exc, led.run_id)
            if isinstance(exc, TunlabError):
                exc.hint = f"logs kept in {self.results_dir / led.run_id}" if self.results_dir else None
            raise
        return self

    # what a lab of another shape changes (a host's part of a lab across hosts: tunlab.lab.hostpart)
    def _create_ledger(self, meta: dict[str, Any]) -> Ledger:
        return Ledger.create(meta)

    def _make_plan(self, led: Ledger) -> LabPlan:
        return build_plan(self.topology, led.run_id, led.dir, seed=self.seed)

    def _make_backend(self, cls: Any, plan: LabPlan, led: Ledger) -> Backend:
        backend: Backend = cls(plan, led)
        return backend

    def _key(self) -> bytes:
        return os.urandom(32)

    def detach(self) -> None:
        """Leave the lab running after this process exits (`tunlab up`); `tunlab down` removes it."""
        self._detached = True
        self.ledger.update_meta(state="up", owner=None)

    def close(self) -> None:
        """Tear down everything the run recorded (reverse order), keep the relays' final counters and
        copy logs and counters to ``results_dir``; problems go to ``teardown_errors``. Safe to call twice."""
        led = self._ledger
        if led is None or self._detached:
            return
        self._ledger = None
        if self._backend is not None:
            relays = self._relays
            if relays is not None:
                relays.release()
            try:
                self.teardown_errors = self._backend.teardown()
            finally:
                if relays is not None:
                    relays.reap()
        else:  # failed before the backend existed: replay what was recorded so far
            from tunlab.lab.ledger import replay

            cls: Any = backend_class(self.backend_name)
            self.teardown_errors = replay(led, cls.removers(led))
        self.final_counters = read_final_counters(led.dir)
        if self.results_dir is not None:
            keep_results(led.dir, self.results_dir / led.run_id)
        if not self.teardown_errors:  # else the ledger stays for `tunlab clean` once this process is gone
            led.remove_dir()

    # ------------------------------------------------------------------ the running lab
    @property
    def ledger(self) -> Ledger:
        if self._ledger is None:
            raise TunlabError("this lab is not up")
        return self._ledger

    @property
    def backend(self) -> Backend:
        if self._backend is None:
            raise TunlabError("this lab is not up")
        return self._backend

    @property
    def plan(self) -> LabPlan:
        if self._plan is None:
            raise TunlabError("this lab is not up")
        return self._plan

    @property
    def nodes(self) -> dict[str, Node]:
        return dict(self._nodes)

    def node(self, name: str) -> Node:
        node: Node = super().node(name)
        return node

    @property
    def underlay_links(self) -> list[UnderlayLink]:
        return list(self.plan.links)

    @property
    def relays(self) -> RelaySupervisor:
        if self._relays is None:
            raise TunlabError("this lab is not up")
        return self._relays

    def nsh_tables(self) -> dict[str, dict[str, Any]]:
        """NSH mode: node -> its relay's tables as the chain definition says (the plan's, with the changes
        made by :meth:`nsh_set` since)."""
        import json as _json

        if self._nsh_tables is None:
            self._nsh_tables = {n.name: _json.loads(n.nsh_json) for n in self.plan.nodes if n.nsh_json}
        return {k: dict(v) for k, v in self._nsh_tables.items()}

    def nsh_set(self, node: str, **tables: Any) -> dict[str, Any]:
        """Re-classify at run time: replace ``classifier=[...]`` and/or ``forward=[...]`` of ``node``'s relay
        through its control socket; the checks of later probes expect the new tables."""
        from tunlab.relay.control import request

        current = self.nsh_tables()
        if node not in current:
            raise TunlabError(f"node {node} has no NSH tables", "is the topology in NSH mode (service_paths)?")
        reply = request(self.node(node).plan.control, {"cmd": "nsh", "set": tables})
        if not reply.get("ok"):
            raise TunlabError(f"relay of {node}: {reply.get('error')}")
        assert self._nsh_tables is not None
        self._nsh_tables[node] = new = {**self._nsh_tables[node], **tables}
        path = self.node(node).plan.nsh_file
        if path:  # a relay the supervisor restarts reads the tables in force, not the plan's
            import json as _json

            tmp = f"{path}.tmp{os.getpid()}"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
            try:
                os.write(fd, _json.dumps(new, indent=1).encode())
            finally:
                os.close(fd)
            os.replace(tmp, path)
        return reply

    def relay_counters(self) -> dict[str, dict[str, Any]]:
        """Every relay's counters now, through its control socket (nodes whose relay is gone: absent)."""
        return self.relays.counters()

    def wait_connected(self, timeout: float | None = None, links: Any = None) -> None:
        """Until every relay (or those of ``links``) has its peers connected and its datapath settled."""
        self.relays.wait_connected(timeout, links)

    def impair(self, link: str, spec: str | dict[str, Any] | None = None, *, direction: str | None = None,
               clear: bool = False, state: str | None = None) -> list[dict[str, Any]]:
        """Change a link's impairments now, through its relays' control sockets (issue 17):
        ``lab.impair("vnf1-vnf2", "delay=20ms loss=1%")`` (both directions, on top of what is set),
        ``direction="vnf1>vnf2"`` (or "a>b"/"b>a") for one, ``clear=True`` to reset first,
        ``state="down"|"up"`` to take the link down or up. Returns each direction's reply."""
        from tunlab.lab import impairs

        lk = impairs.find_link(self.plan.links, link)
        return impairs.apply(lk.name, lk.a.node, lk.b.node, direction,
                             impairs.request(spec, clear=clear, state=state),
                             lambda node: self.plan.node(node).control)

    def seal_keys(self) -> dict[int, bytes]:
        """The session keys of a keyed lab's links (from every relay's --seal-keylog), to open captures."""
        from tunlab.relay.seal import read_keylog

        keys: dict[int, bytes] = {}
        for n in self.plan.nodes:
            keys.update(read_keylog(f"{self.plan.run_dir}/{n.name}.keys"))
        return keys

    def dead_relays(self) -> dict[str, str]:
        """Node -> why, for every relay that died ("the relay of node vnf2 (pid N) killed by signal 9
        (SIGKILL)"); empty while every relay runs. Deaths are noticed within a fifth of a second and logged."""
        return self.relays.deaths()

    def kill_relay(self, node: str) -> None:
        """SIGKILL the relay of ``node`` (for negative tests) and reap it."""
        self.relays.kill(node)


def _netem_fallback(t: Topology) -> Topology:
    """Links' netem options (TCLink's delay, jitter, loss) on a kernel without netem: done by the relays
    (issue 17) instead of being refused, so a topology written for Mininet runs on both backends."""
    from tunlab.model.shaping import parse_link_options

    if not any(lk.shaping and parse_link_options(dict(lk.shaping), where=lk.name).needs_netem for lk in t.links):
        return t
    from tunlab.lab.backends.netem import netem_available

    if netem_available():
        return t
    from tunlab.model.shaping import netem_to_relay

    moved, notes = netem_to_relay(t)
    for line in notes:
        log.info("%s", line)
    return moved  # type: ignore[return-value]


def read_final_counters(run_dir: Path) -> dict[str, dict[str, Any]]:
    out = {}
    for p in sorted(Path(run_dir).glob("*.stats.json")):
        try:
            out[p.name[: -len(".stats.json")]] = json.loads(p.read_text())
        except (OSError, ValueError):
            pass
    return out


def keep_results(run_dir: Path, dest: Path) -> None:
    """Copy relay logs, outputs, counters and the ledger into ``dest`` (owned by the invoking user)."""
    make_user_dir(dest)
    for p in Path(run_dir).iterdir():
        if p.suffix in (".log", ".out", ".json", ".jsonl") and not p.is_symlink() and p.is_file():
            with open(p, "rb") as src, open_user_file(dest / p.name) as out:  # no link followed, ours only
                shutil.copyfileobj(src, out)


def teardown_run(ledger: Ledger) -> list[str]:
    """Remove what a run recorded (`tunlab down` / `tunlab clean`), keep its results, drop its directory.

    The directory stays when something could not be removed, so a later `tunlab clean` retries."""
    from tunlab.lab.backends.netns import NetnsBackend
    from tunlab.lab.ledger import replay

    meta = ledger.meta()
    try:
        cls: Any = backend_class(str(meta.get("backend") or "netns"))
    except TunlabError:
        cls = NetnsBackend  # its removers know netns, link, tun, proc and file entries
    errors = replay(ledger, cls.removers(ledger))
    results = meta.get("results_dir")
    if results:
        try:
            keep_results(ledger.dir, Path(results) / ledger.run_id)
        except OSError as exc:
            errors.append(f"run {ledger.run_id}: could not copy results to {results}: {exc}")
    if not errors:
        ledger.remove_dir()
    return errors
