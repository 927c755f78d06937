"""Device set-up for the fast datapath: open the TUN/TAP with virtio-net headers, address it, bring it up.

Uses pyroute2 (imported here, lazily) for address, MTU, GSO size and link state in the current
namespace.
"""

from __future__ import annotations

import ipaddress
import os

from tunlab.errors import TunlabError
from tunlab.relay import fast_io

#: TCP super-packets are capped so a whole one (plus chunk headers) fits one UDP GSO send
DEFAULT_GSO_MAX = 62000


class Device:
    """An open TUN/TAP queue (``fd``) and, when we created or configured it, what we set."""

    def __init__(self, name: str, *, tap: bool = False, addr: str | None = None, mtu: int | None = None,
                 attach: bool = False, gso_max: int | None = DEFAULT_GSO_MAX) -> None:
        self.fd, self.name = fast_io.open_tun(name, tap=tap, vnet_hdr=True)
        self.tap = tap
        self.offload = 0
        try:
            if not attach:
                self._configure(addr, mtu, gso_max)
            self.mtu = self._read_mtu()
        except BaseException:
            os.close(self.fd)
            raise

    def _configure(self, addr: str | None, mtu: int | None, gso_max: int | None) -> None:
        from pyroute2 import IPRoute  # lazy: ~0.2 s import

        with IPRoute() as ipr:
            found = ipr.link_lookup(ifname=self.name)
            if not found:
                raise TunlabError(f"device {self.name} vanished after it was opened")
            idx = found[0]
            changes: dict[str, int | str] = {}
            if mtu:
                changes["mtu"] = mtu
            if changes:
                ipr.link("set", index=idx, **changes)
            if gso_max:
                try:
                    ipr.link("set", index=idx, gso_max_size=gso_max)
                except Exception:  # older kernels cannot change it; chunks are then sent in two sends
                    pass
            if addr:
                iface = ipaddress.ip_interface(addr)
                have = {(a.get_attr("IFA_ADDRESS"), a["prefixlen"]) for a in ipr.get_addr(index=idx)}
                if (str(iface.ip), iface.network.prefixlen) not in have:
                    ipr.addr("add", index=idx, address=str(iface.ip), prefixlen=iface.network.prefixlen)
            ipr.link("set", index=idx, state="up")

    def _read_mtu(self) -> int:
        try:
            with open(f"/sys/class/net/{self.name}/mtu") as f:
                return int(f.read())
        except OSError:
            return 1500

    def set_offload(self, on: bool) -> bool:
        """Turn TSO/USO/checksum offload on (hand us super-packets) or off; returns the new state."""
        want = fast_io.OFFLOAD_ALL if on else 0
        self.offload = fast_io.set_offload(self.fd, want)
        return bool(self.offload)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
