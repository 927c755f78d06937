"""The host agent: `tunlab hosts agent`, what a controller runs on each host of a lab across hosts over one
ssh session (issue 19, docs/multihost.md).

One JSON object per line each way: a request ``{"cmd": ...}`` on stdin, one reply on stdout (``{"ok": true,
...}`` or ``{"ok": false, "error": "one line"}``). Each request is one phase for this host (so one SSH round
trip per host per phase, the controller sending to every host before reading any reply):

- ``hello`` {underlay, peers}: version, pid, clock, the MTU of the interface holding the underlay address,
  the other hosts' underlay addresses that do not answer a ping;
- ``up`` {run_id, topology, placement, inventory, host, key}: the host's part of the lab (its nodes, veths,
  uplinks, relays ready; its own ledger) -- :class:`tunlab.lab.hostpart.HostPartLab`;
- ``connect`` {timeout}: every hop of this host's relays connected and settled;
- ``exec`` {node, argv}, ``counters``, ``dead``, ``keys``;
- ``capture`` {points}, ``send`` {probes}, ``collect`` {quiet, timeout}: captures on this host's points, the
  probes sent from its nodes, the frames gathered back (for the per-hop checks on the controller);
- ``down`` {logs}: teardown, final counters (and the relays' logs, counters and ledger); ``detach``: leave the part up (`tunlab up --hosts`).

Objects (topology, inventory, frames) travel pickled in base64. Toward a host this adds no trust: the
controller is root there through ssh already and runs the same tunlab version (``hello`` says which). Back
to the controller, a host's answers are read with only captured frames allowed besides plain data
(tunlab.lab.multihost.ANSWER_CLASSES), so a host that was taken over cannot run code on the controller.
When stdin closes without ``down`` or ``detach`` (the controller was killed), the agent exits and leaves the
part for `tunlab clean` (its owner, the agent, is gone: the run is dead).
"""

from __future__ import annotations

import base64
import json
import os
import pickle
import subprocess
import sys
import time
from typing import Any, BinaryIO

from tunlab.errors import TunlabError


def pack(obj: Any) -> str:
    return base64.b64encode(pickle.dumps(obj)).decode()


def unpack(text: str) -> Any:
    return pickle.loads(base64.b64decode(text))  # noqa: S301 - from the controller, root here already


def underlay_mtu(addr: str) -> int | None:
    """The MTU of the interface that holds ``addr`` (None when none does)."""
    res = subprocess.run(["ip", "-o", "addr", "show", "to", addr], capture_output=True, text=True, timeout=10)
    words = res.stdout.split()
    if len(words) < 2:
        return None
    # from netlink (`ip link`), not /sys/class/net: a host whose network namespace is not the one its /sys
    # was mounted in (a container, a stand-in host) would read another device's MTU there
    res = subprocess.run(["ip", "-o", "link", "show", "dev", words[1].split("@")[0]], capture_output=True, text=True,
                         timeout=10)
    link = res.stdout.split()
    try:
        return int(link[link.index("mtu") + 1])
    except (ValueError, IndexError):
        return None


def unreached(addrs: list[str]) -> list[str]:
    """The addresses among ``addrs`` that do not answer one ping within 2 s (all pinged at once)."""
    procs = [(a, subprocess.Popen(["ping", "-c", "1", "-W", "2", "-q", a], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)) for a in addrs]
    return [a for a, p in procs if p.wait(timeout=10) != 0]


class Agent:
    def __init__(self) -> None:
        self.lab: Any = None
        self.capture: Any = None
        self.done = False

    def handle(self, req: dict[str, Any]) -> dict[str, Any]:
        cmd = req.get("cmd")
        fn = getattr(self, f"do_{cmd}", None) if isinstance(cmd, str) else None
        if fn is None:
            raise TunlabError(f"unknown agent request {cmd!r}")
        out: dict[str, Any] = fn(req)
        return out

    # ------------------------------------------------------------------ phases
    def do_hello(self, req: dict[str, Any]) -> dict[str, Any]:
        from importlib.metadata import version

        return {"version": version("tunlab"), "pid": os.getpid(), "time": time.time(), "root": os.geteuid() == 0,
                "mtu": underlay_mtu(str(req.get("underlay", ""))),
                "unreached": unreached([str(a) for a in req.get("peers") or []])}

    def do_up(self, req: dict[str, Any]) -> dict[str, Any]:
        from tunlab.lab.hostpart import HostPartLab

        if self.lab is not None:
            raise TunlabError("this agent already holds a lab")
        lab = HostPartLab(unpack(req["topology"]), run_id=req["run_id"], host=req["host"],
                          placement=req["placement"], inventory=unpack(req["inventory"]),
                          key=base64.b64decode(req["key"]) if req.get("key") else None,
                          controller=req.get("controller") or {}, ready_timeout=req.get("ready_timeout"),
                          restart_relays=bool(req.get("restart_relays")))
        lab.__enter__()
        self.lab = lab
        return {"timings": lab.timings, "run_dir": str(lab.run_dir),
                "nodes": {n: node.netns_file for n, node in lab.nodes.items()}}

    def do_connect(self, req: dict[str, Any]) -> dict[str, Any]:
        self._lab().wait_connected(req.get("timeout"))
        return {}

    def do_exec(self, req: dict[str, Any]) -> dict[str, Any]:
        res = self._lab().node(req["node"]).cmd_status(req["argv"], timeout=req.get("timeout") or 60)
        return {"rc": res.returncode, "stdout": res.stdout, "stderr": res.stderr}

    def do_counters(self, req: dict[str, Any]) -> dict[str, Any]:
        return {"counters": self._lab().relay_counters()}

    def do_dead(self, req: dict[str, Any]) -> dict[str, Any]:
        return {"dead": self._lab().dead_relays()}

    def do_keys(self, req: dict[str, Any]) -> dict[str, Any]:
        return {"keys": pack(self._lab().seal_keys())}

    def do_capture(self, req: dict[str, Any]) -> dict[str, Any]:
        from tunlab.traffic.capture import Capture, CapturePoint

        lab = self._lab()
        points = [CapturePoint(name, lab.node(node).netns_file, ifname, bpf) for name, node, ifname, bpf in req["points"]]
        cap = Capture(points)
        cap.__enter__()
        self.capture = cap
        cap.touch()
        return {}

    def do_send(self, req: dict[str, Any]) -> dict[str, Any]:
        from tunlab.traffic.inject import Injector

        lab = self._lab()
        injectors: dict[str, Any] = {}
        try:
            for src, packet in unpack(req["probes"]):
                if src not in injectors:
                    injectors[src] = Injector(lab.node(src).netns_file, src)
                injectors[src].send(packet)
        finally:
            for inj in injectors.values():
                inj.close()
        return {"sent": True}

    def do_collect(self, req: dict[str, Any]) -> dict[str, Any]:
        cap = self.capture
        if cap is None:
            raise TunlabError("no capture is running on this host")
        self.capture = None
        try:
            cap.wait_quiet(float(req.get("quiet", 1.5)), float(req.get("timeout", 10)))
        finally:
            cap.__exit__(None, None, None)
        return {"frames": pack(cap.frames()), "stats": cap.stats}

    def do_down(self, req: dict[str, Any]) -> dict[str, Any]:
        lab, self.lab = self.lab, None
        self.done = True
        if lab is None:
            return {"errors": [], "final_counters": {}}
        logs: dict[str, str] = {}
        if req.get("logs"):  # the relays' logs and counters, as they are at teardown
            import tempfile
            from pathlib import Path

            with tempfile.TemporaryDirectory(prefix="tunlab-agent-") as tmp:
                lab.results_dir = Path(tmp)
                lab.close()
                for f in sorted((Path(tmp) / lab.run_id).glob("*")):
                    if f.is_file() and f.stat().st_size <= 4 << 20:
                        logs[f.name] = f.read_text(errors="replace")
        else:
            lab.close()
        return {"errors": lab.teardown_errors, "final_counters": lab.final_counters, "logs": logs}

    def do_detach(self, req: dict[str, Any]) -> dict[str, Any]:
        self._lab().detach()
        self.done = True
        return {}

    def _lab(self) -> Any:
        if self.lab is None:
            raise TunlabError("this host has no part of a lab up (no 'up' request yet)")
        return self.lab


def serve(inp: BinaryIO, out: BinaryIO) -> int:
    """Answer requests until ``down``/``detach`` or the end of input."""
    agent = Agent()
    for raw in inp:
        try:
            req = json.loads(raw)
            if not isinstance(req, dict):
                raise ValueError("not a JSON object")
        except ValueError as exc:
            reply: dict[str, Any] = {"ok": False, "error": f"bad request: {exc}"}
        else:
            try:
                reply = {"ok": True, **agent.handle(req)}
            except TunlabError as exc:
                reply = {"ok": False, "error": exc.message + (f" ({exc.hint})" if exc.hint else "")}
            except Exception as exc:  # noqa: BLE001 - one line to the controller, never a hang
                reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        out.write((json.dumps(reply, default=str) + "\n").encode())
        out.flush()
        if agent.done:
            return 0
    return 0  # the controller went away: a part still up stays for `tunlab clean` (its owner is gone)


def main() -> int:
    """The protocol owns the real stdout; anything else printed goes to stderr."""
    proto = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return serve(sys.stdin.buffer, proto)
