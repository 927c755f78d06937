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
    """A raw IP socket inside one node; ``send(packet)`` returns the wall-clock time it was handed over.

    IPv6 packets go through an ``AF_INET6`` ``IPPROTO_RAW`` socket (the header is ours there too: hop limit,
    flow label), opened when the first one is sent."""

    def __init__(self, netns_file: str, node: str = "") -> None:
        self.node = node or netns_file
        self._netns_file = netns_file
        self._sock = socket_in(netns_file, socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        self._sock6: socket.socket | None = None

    def __enter__(self) -> Injector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._sock.close()
        if self._sock6 is not None:
            self._sock6.close()

    def send(self, packet: bytes) -> float:
        if len(packet) >= 40 and packet[0] >> 4 == 6:
            if self._sock6 is None:
                self._sock6 = socket_in(self._netns_file, socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_RAW)
            sock, dst = self._sock6, socket.inet_ntop(socket.AF_INET6, packet[24:40])
        elif len(packet) >= 20 and packet[0] >> 4 == 4:
            sock, dst = self._sock, socket.inet_ntoa(packet[16:20])
        else:
            raise ValueError("only IPv4 and IPv6 packets can be injected")
        try:
            sock.sendto(packet, (dst, 0))
        except OSError as exc:
            hint = "larger than the route's MTU" if exc.errno == 90 else None  # EMSGSIZE
            raise TunlabError(f"{self.node} could not send {len(packet)} bytes to {dst}: {exc.strerror}",
                              hint) from None
        return time.time()

    def send_all(self, packets: Sequence[bytes]) -> list[float]:
        return [self.send(p) for p in packets]
