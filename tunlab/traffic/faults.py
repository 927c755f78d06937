"""Faulty VNFs on purpose: relay hooks that break a chain in known ways, to prove the checks catch them.

Use one as a hook VNF, e.g. ``Vnf("vnf2", "172.16.1.2", kind="hook", hook="tunlab.traffic.faults:drop_all")``.
Each is ``FUNC(packet: bytes) -> bytes | None`` (the relay's ``--hook`` contract) and stays light: no scapy
import in the relay process.

- :func:`passthrough`: forwards untouched (the control case);
- :func:`drop_all`: silently drops everything;
- :func:`flip_payload_byte`: flips the last payload byte and fixes the checksums, so only a payload
  comparison can tell;
- :func:`bare_instead`: writes the inner packet bare onto the underlay interface toward its next hop
  (to a MAC address nobody owns, so no kernel forwards it) instead of handing it back to the relay.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import struct
import sys

ETH_P_IP = 0x0800
NOBODY_MAC = bytes.fromhex("020000c0ffee")  # locally administered, owned by no interface of a lab


def passthrough(packet: bytes) -> bytes:
    return packet


def drop_all(packet: bytes) -> None:
    return None


def _csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\x00"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def fix_l4_checksum(packet: bytearray) -> None:
    """Recompute the ICMP, UDP or TCP checksum of an IPv4 packet in place."""
    ihl = (packet[0] & 0x0F) * 4
    proto = packet[9]
    l4 = packet[ihl:]
    offset = {1: 2, 6: 16, 17: 6}.get(proto)
    if offset is None or len(l4) < offset + 2:
        return
    if proto == 17 and l4[6:8] == b"\x00\x00":
        return  # no UDP checksum in use
    l4[offset:offset + 2] = b"\x00\x00"
    if proto == 1:
        value = _csum(bytes(l4))
    else:
        pseudo = bytes(packet[12:20]) + struct.pack("!BBH", 0, proto, len(l4))
        value = _csum(pseudo + bytes(l4))
        if proto == 17 and value == 0:
            value = 0xFFFF
    l4[offset:offset + 2] = struct.pack("!H", value)
    packet[ihl:] = l4


def flip_payload_byte(packet: bytes) -> bytes:
    """The same packet with its last byte inverted (IPv4 with a payload), checksums made right again."""
    if len(packet) < 29 or packet[0] >> 4 != 4:
        return packet
    out = bytearray(packet)
    out[-1] ^= 0xFF
    fix_l4_checksum(out)
    return bytes(out)


def _own_args() -> list[str]:
    """The relay's command line (a relay may be forked from a server: its sys.argv, not /proc's cmdline)."""
    return list(sys.argv)


def _next_hop_ip(dst: str, args: list[str]) -> str | None:
    """The relay's next-hop peer address for ``dst``, from its own ``--route`` and ``--peer``/``--accept``."""
    peers: dict[str, str] = {}
    routes: list[tuple[ipaddress.IPv4Network, str]] = []
    for flag, value in zip(args, args[1:]):
        if flag in ("--peer", "--accept") and "=" in value:
            name, _, addr = value.partition("=")
            peers[name] = addr.rsplit(":", 1)[0] if flag == "--peer" else addr
        elif flag == "--route" and "=" in value:
            prefix, _, name = value.partition("=")
            net = ipaddress.IPv4Network("0.0.0.0/0" if prefix == "default" else prefix, strict=False)
            routes.append((net, name))
    target = ipaddress.IPv4Address(dst)
    best = max((r for r in routes if target in r[0]), key=lambda r: r[0].prefixlen, default=None)
    if best is None and len(peers) == 1:
        return next(iter(peers.values()))
    return peers.get(best[1]) if best else None


def _iface_toward(ip: str) -> str | None:
    """The interface of this namespace whose connected route holds ``ip`` (from /proc/net/route)."""
    addr = int(ipaddress.IPv4Address(ip))
    best: tuple[int, str] | None = None
    with open("/proc/net/route") as f:
        next(f)
        for line in f:
            cols = line.split()
            dest, gw, mask = (int.from_bytes(bytes.fromhex(c), "little") for c in (cols[1], cols[2], cols[7]))
            if gw == 0 and addr & mask == dest and (best is None or mask > best[0]):
                best = (mask, cols[0])
    return best[1] if best else None


def bare_instead(packet: bytes) -> None:
    """Put ``packet`` bare on the underlay link toward the relay's next hop; the relay sends nothing."""
    if len(packet) < 20 or packet[0] >> 4 != 4:
        return None
    nh = _next_hop_ip(socket.inet_ntoa(packet[16:20]), _own_args())
    iface = _iface_toward(nh) if nh else None
    if iface is None:
        os.write(2, b"bare_instead: no next hop found\n")
        return None
    with socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_IP)) as s:
        s.sendto(packet, (iface, ETH_P_IP, 0, 0, NOBODY_MAC))
    return None
