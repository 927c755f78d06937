"""Send probe packets from inside a node, so they take the real path out of its kernel.

A raw IPv4 socket (``IPPROTO_RAW``, which implies ``IP_HDRINCL``) opened in the sender's namespace hands the
exact bytes scapy built to that namespace's routing: a packet for an overlay address leaves through the
node's TUN device into its relay, as any application's packet would. The kernel keeps our IP id and
checksum as given (both are non-zero), so what the sender's TUN capture shows is byte for byte what was built.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Sequence

from tunlab.errors import TunlabError
from tunlab.system.netns import socket_in


class Injector:
    """A raw IP socket inside one node; ``send(packet)`` returns the wall-clock time it was handed over."""

    def __init__(self, netns_file: str, node: str = "") -> None:
        self.node = node or netns_file
        self._sock = socket_in(netns_file, socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)

    def __enter__(self) -> Injector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._sock.close()

    def send(self, packet: bytes) -> float:
        if len(packet) < 20 or packet[0] >> 4 != 4:
            raise ValueError("only IPv4 packets can be injected")
        dst = socket.inet_ntoa(packet[16:20])
        try:
            self._sock.sendto(packet, (dst, 0))
        except OSError as exc:
            hint = "larger than the route's MTU" if exc.errno == 90 else None  # EMSGSIZE
            raise TunlabError(f"{self.node} could not send {len(packet)} bytes to {dst}: {exc.strerror}",
                              hint) from None
        return time.time()

    def send_all(self, packets: Sequence[bytes]) -> list[float]:
        return [self.send(p) for p in packets]
