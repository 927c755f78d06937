"""``tunlab pcap inner FILE``: the inner packets of a link capture as a plain pcap (any tool reads it);
``tunlab pcap wireshark``: where the shipped Wireshark dissector is, and how to use it.

A link capture holds the relay's wire formats: plain IP packets in UDP datagrams (several glued together
where a UDP GSO send was captured whole), chunks of GSO streams (a 12-byte header and a piece of
virtio-net header + packet), hellos, or TCP's 2-byte length framing. ``inner`` undoes all of them:
chunks are reassembled, GSO super-packets cut the way the receiving kernel cuts them (``--whole`` keeps
them), TCP streams de-framed per direction; hellos are left out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from tunlab.errors import DescriptionError

DEFAULT_PORT = 55555
LUA = Path(__file__).resolve().parents[1] / "wireshark" / "tunlab.lua"


@click.group("pcap")
def pcap_cmd() -> None:
    """Link captures: inner packets as a plain pcap; the Wireshark dissector."""


def _tcp_inner(packets: list[Any], ports: set[int]) -> list[Any]:
    """De-frame the TCP streams on ``ports`` (per direction, in sequence order, retransmissions once)."""
    from scapy.layers.inet import IP, TCP
    from scapy.layers.inet6 import IPv6

    from tunlab.relay.framing import Deframer

    streams: dict[tuple[Any, ...], dict[int, tuple[bytes, float]]] = {}
    for p in packets:
        tcp = p.getlayer(TCP)
        if tcp is None or not (tcp.sport in ports or tcp.dport in ports):
            continue
        data = bytes(tcp.payload)
        if not data:
            continue
        ip = tcp.underlayer
        key = (getattr(ip, "src", None), tcp.sport, getattr(ip, "dst", None), tcp.dport)
        streams.setdefault(key, {}).setdefault(int(tcp.seq), (data, float(p.time)))
    out: list[tuple[float, Any]] = []
    for segments in streams.values():
        deframer = Deframer(0xFFFF - 1)
        for _, (data, ts) in sorted(segments.items()):
            for frame in deframer.push(data):
                raw = bytes(frame)
                pkt = IPv6(raw) if raw and raw[0] >> 4 == 6 else IP(raw)
                pkt.time = ts
                out.append((ts, pkt))
    return [p for _, p in sorted(out, key=lambda x: x[0])]


@pcap_cmd.command("inner")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("-o", "--output", default=None, metavar="OUT",
              help="the pcap to write (default: FILE with .inner.pcap instead of its suffix)")
@click.option("-p", "--port", "ports", type=int, multiple=True,
              help=f"the relays' UDP/TCP port (repeatable; default {DEFAULT_PORT}); chunks are found on any port")
@click.option("--whole", is_flag=True, help="keep GSO super-packets whole (default: cut as the receiver's kernel does)")
@click.option("--tap", is_flag=True, help="the relays carried Ethernet frames (tunlab relay --tap)")
def inner_cmd(file: str, output: str | None, ports: tuple[int, ...], whole: bool, tap: bool) -> None:
    """Write the inner packets of the link capture FILE as a plain pcap."""
    from scapy.error import Scapy_Exception
    from scapy.utils import rdpcap, wrpcap

    from tunlab.relay.fast.scapy_encap import inner_packets

    port_set = set(ports or (DEFAULT_PORT,))
    try:
        packets = list(rdpcap(file))
    except (Scapy_Exception, OSError, ValueError) as exc:
        raise DescriptionError(f"not a pcap or pcapng file: {exc}", source=file) from None
    inner = inner_packets(packets, ports=port_set, segment=not whole, l2=tap)
    inner += _tcp_inner(packets, port_set)
    inner.sort(key=lambda p: float(p.time))
    out = Path(output) if output else Path(file).with_suffix(".inner.pcap")
    if not inner:
        raise DescriptionError(f"no relay traffic on port(s) {', '.join(map(str, sorted(port_set)))}",
                               source=file, hint="give the relays' port with -p PORT")
    wrpcap(str(out), inner)
    from tunlab.system.privileges import chown_to_invoking_user

    chown_to_invoking_user(out, recursive=False)
    click.echo(f"{out}: {len(inner)} inner packet(s) from {len(packets)} captured")


@pcap_cmd.command("wireshark")
def wireshark_cmd() -> None:
    """Print the path of the shipped Wireshark dissector and how to load it."""
    click.echo(str(LUA))
    click.echo(f"use: wireshark -X lua_script:{LUA} FILE   (or tshark -X lua_script:... -r FILE), or copy it "
               "into Wireshark's personal Lua plugins folder", err=True)
