"""Mininet node classes tuned for shared machines. Imports mininet: load it through mininet_support first.

- :class:`QuietMininet` does not run Mininet's ``fixLimits()``, which rewrites machine-wide sysctls
  (``net.core.rmem_max``, ARP cache sizes, ``kernel.pty.max``...) that other users of the machine rely on.
- :class:`NsBridge` is a Linux bridge that lives inside a namespace of its own, so a lab puts no interface
  at all in the root namespace (nothing to collide with, nothing that root-namespace firewall rules see);
  bridge netfilter is switched off in that namespace only.
- :class:`LabHost` is a Mininet host whose IPv6 is off (no DAD or router solicitations in captures) and
  whose interfaces come up with checksum offload off.
"""

from __future__ import annotations

import os
from typing import Any

from mininet.link import Intf, TCIntf
from mininet.net import Mininet
from mininet.node import Host, Switch
from mininet.nodelib import LinuxBridge

QUIET_SYSCTLS = (
    "net.ipv6.conf.all.disable_ipv6=1",
    "net.ipv6.conf.default.disable_ipv6=1",
    "net.ipv4.conf.all.rp_filter=0",
    "net.ipv4.conf.default.rp_filter=0",
)


class QuietMininet(Mininet):  # type: ignore[misc]
    """Mininet without its machine-wide resource tuning (``fixLimits``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        previous = Mininet.inited
        Mininet.inited = True  # Mininet.init() would call ensureRoot() and fixLimits()
        try:
            super().__init__(*args, **kwargs)
        finally:
            Mininet.inited = previous


class TaggedShell:
    """Mixin for Mininet nodes: ``env`` adds to the environment of the node's shell (and so of all it
    runs), e.g. ``TUNLAB_RUN=<id>``; such a shell also exits on SIGTERM (an interactive bash ignores it
    otherwise), so it can be stopped like any other process of the run."""

    _extra_env: dict[str, str] = {}

    def _popen(self, cmd: list[str], **params: Any) -> Any:
        if self._extra_env and "env" not in params:
            params["env"] = {**os.environ, **self._extra_env}
        return super()._popen(cmd, **params)  # type: ignore[misc]

    def _tagged_started(self) -> None:
        if self._extra_env:
            self.cmd("trap 'exit 0' TERM")  # type: ignore[attr-defined]


class LabHost(TaggedShell, Host):  # type: ignore[misc]
    """A host with IPv6 off and rp_filter off, set as soon as its namespace exists.

    ``quiet=False``: leave the sysctls alone (the Mininet backend sets them itself, through netlink).
    ``env``: see :class:`TaggedShell`."""

    def __init__(self, name: str, quiet: bool = True, env: dict[str, str] | None = None, **params: Any) -> None:
        self._extra_env = dict(env or {})
        super().__init__(name, **params)
        self._tagged_started()
        if quiet:
            self.cmd("sysctl -q -w " + " ".join(QUIET_SYSCTLS))


class LabIntf(Intf):  # type: ignore[misc]
    """An interface whose address Mininet records but does not set: tunlab configures it (netlink)."""

    def config(self, ip: str | None = None, **_params: Any) -> dict[str, Any]:
        if ip:
            self.ip, self.prefixLen = ip.split("/")
        return {}


class LabTCIntf(TCIntf):  # type: ignore[misc]
    """A shaped interface (rate/delay/loss through tc) whose address tunlab configures."""

    def config(self, ip: str | None = None, **params: Any) -> dict[str, Any]:
        if ip:
            self.ip, self.prefixLen = ip.split("/")
        result: dict[str, Any] = TCIntf.config(self, **params) or {}
        return result


class NsBridge(TaggedShell, LinuxBridge):  # type: ignore[misc]
    """A Linux bridge in a namespace of its own (needs no controller). ``env``: see :class:`TaggedShell`."""

    def __init__(self, name: str, env: dict[str, str] | None = None, **params: Any) -> None:
        self._extra_env = dict(env or {})
        params["inNamespace"] = True
        params.setdefault("dpid", "%016x" % (abs(hash(name)) % (1 << 63)))
        super().__init__(name, **params)
        self._tagged_started()
        self.cmd("sysctl -q -w " + " ".join(QUIET_SYSCTLS))
        # bridged frames must not go through this namespace's iptables/nftables
        self.cmd("for f in /proc/sys/net/bridge/bridge-nf-call-*; do [ -w $f ] && echo 0 > $f; done")

    @classmethod
    def setup(cls) -> None:
        # LinuxBridge.setup() warns about the *root* namespace's bridge-nf settings; ours is elsewhere.
        return None

    def start(self, _controllers: Any) -> None:
        self.cmd("ip link add name", self.name, "type bridge")
        for intf in self.intfList():
            if self.name in intf.name:
                self.cmd("ip link set", intf.name, "master", self.name, "up")
        self.cmd("ip link set", self.name, "up")

    def stop(self, deleteIntfs: bool = True) -> None:  # noqa: N803 - Mininet's name
        # Nothing to delete one by one: the bridge and its ports vanish with the namespace when
        # terminate() ends the shell (Mininet calls it right after stop()).
        return None




OVS_TOOLS = ("ovsdb-tool", "ovsdb-server", "ovs-vswitchd", "ovs-vsctl")
OVS_SCHEMA = "/usr/share/openvswitch/vswitch.ovsschema"


def ovs_unavailable_reason() -> str | None:
    """Why a private userspace Open vSwitch cannot run here, or None."""
    import shutil

    missing = [t for t in OVS_TOOLS if shutil.which(t) is None]
    if missing or not os.path.exists(OVS_SCHEMA):
        return ("Open vSwitch is not installed (missing: " + ", ".join(missing or [OVS_SCHEMA])
                + "); install it with 'sudo apt-get install openvswitch-switch', or use the Linux bridge")
    return None


class NsOvsSwitch(TaggedShell, Switch):  # type: ignore[misc]
    """An Open vSwitch bridge with the userspace datapath, in a namespace of its own, run by a private
    ovsdb-server and ovs-vswitchd started inside that namespace (the machine's OVS service, and its
    kernel module, are neither needed nor touched). ``standalone`` fail mode: a learning switch, no
    controller. Its daemons' files (database, sockets, logs, pid files) live in ``rundir``; they inherit
    the shell's environment (``env``, see :class:`TaggedShell`)."""

    def __init__(self, name: str, rundir: str, env: dict[str, str] | None = None, **params: Any) -> None:
        self._extra_env = dict(env or {})
        params["inNamespace"] = True
        params.setdefault("dpid", "%016x" % (abs(hash(name)) % (1 << 63)))
        self.rundir = rundir
        super().__init__(name, **params)
        self._tagged_started()

    @classmethod
    def setup(cls) -> None:
        return None  # Mininet's OVS checks look at the machine's OVS service, which we do not use

    @property
    def db(self) -> str:
        return f"unix:{self.rundir}/db.sock"

    def _run(self, *argv: str) -> str:
        out: str = self.cmd(*argv, "2>&1; echo rc=$?")
        rc = out.rstrip().rsplit("rc=", 1)
        if len(rc) != 2 or rc[1].strip() != "0":
            raise RuntimeError(f"{self.name}: {' '.join(argv)}: {rc[0].strip()[-300:]}")
        return rc[0]

    def start(self, _controllers: Any) -> None:
        d = self.rundir
        os.makedirs(d, exist_ok=True)
        common = ["--detach", "--no-chdir"]
        self._run("ovsdb-tool", "create", f"{d}/conf.db", OVS_SCHEMA)
        self._run("ovsdb-server", f"{d}/conf.db", f"--remote=punix:{d}/db.sock", f"--pidfile={d}/ovsdb.pid",
                  f"--unixctl={d}/ovsdb.ctl", f"--log-file={d}/ovsdb.log", *common)
        self._run("ovs-vsctl", f"--db={self.db}", "--no-wait", "init")
        self._run("ovs-vswitchd", self.db, f"--pidfile={d}/vswitchd.pid", f"--unixctl={d}/vswitchd.ctl",
                  f"--log-file={d}/vswitchd.log", *common)
        ports: list[str] = []
        for intf in self.intfList():
            if self.name in intf.name:
                self.cmd("ip link set", intf.name, "up")
                ports += ["--", "add-port", self.name, intf.name]
        self._run("ovs-vsctl", f"--db={self.db}", "--timeout=10", "add-br", self.name, "--", "set", "bridge",
                  self.name, "datapath_type=netdev", "fail-mode=standalone", *ports)

    def daemon_pids(self) -> list[int]:
        """The pids of this switch's ovsdb-server and ovs-vswitchd (from their pid files)."""
        out = []
        for name in ("vswitchd.pid", "ovsdb.pid"):
            try:
                with open(f"{self.rundir}/{name}", encoding="ascii") as fh:
                    out.append(int(fh.read().strip()))
            except (OSError, ValueError):
                pass
        return out

    def stop(self, deleteIntfs: bool = True) -> None:  # noqa: N803 - Mininet's name
        return None  # the daemons are stopped by the run's ledger; the bridge goes with the namespace


__all__ = ["LabHost", "LabIntf", "LabTCIntf", "NsBridge", "NsOvsSwitch", "QuietMininet", "ovs_unavailable_reason"]
