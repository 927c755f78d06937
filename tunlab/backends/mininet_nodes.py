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
from mininet.node import Host
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


class LabHost(Host):  # type: ignore[misc]
    """A host with IPv6 off and rp_filter off, set as soon as its namespace exists.

    ``quiet=False``: leave the sysctls alone (the Mininet backend sets them itself, through netlink).
    ``env``: extra environment of the host's shell (and so of what it runs), e.g. ``TUNLAB_RUN=<id>``;
    such a shell also exits on SIGTERM (an interactive bash ignores it otherwise), so it can be stopped
    like any other process of the run."""

    def __init__(self, name: str, quiet: bool = True, env: dict[str, str] | None = None, **params: Any) -> None:
        self._extra_env = dict(env or {})
        super().__init__(name, **params)
        if self._extra_env:
            self.cmd("trap 'exit 0' TERM")
        if quiet:
            self.cmd("sysctl -q -w " + " ".join(QUIET_SYSCTLS))

    def _popen(self, cmd: list[str], **params: Any) -> Any:
        if self._extra_env and "env" not in params:
            params["env"] = {**os.environ, **self._extra_env}
        return super()._popen(cmd, **params)


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


class NsBridge(LinuxBridge):  # type: ignore[misc]
    """A Linux bridge in a namespace of its own (needs no controller)."""

    def __init__(self, name: str, **params: Any) -> None:
        params["inNamespace"] = True
        params.setdefault("dpid", "%016x" % (abs(hash(name)) % (1 << 63)))
        super().__init__(name, **params)
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


__all__ = ["LabHost", "LabIntf", "LabTCIntf", "NsBridge", "QuietMininet"]
