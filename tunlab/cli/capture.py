"""`tunlab capture RUN LINK|NODE`: a live pcap of one link (its underlay veth) or one node's TUN, to standard
output (pipe it into Wireshark: ``sudo tunlab capture RUN sender-vnf1 | wireshark -k -i -``) or a file.

tcpdump runs inside the lab's namespace (nothing is captured in the root namespace); Ctrl-C stops it cleanly
and the pcap is complete. "listening on ..." on standard error says when the capture is ready.
"""

from __future__ import annotations

import os
import signal
import struct
import subprocess
import sys
from typing import IO, Any

import click

from tunlab.errors import TunlabError
from tunlab.lab.attach import AttachedLab
from tunlab.system.privileges import chown_to_invoking_user, require_root


@click.command("capture")
@click.argument("run_id", metavar="RUN")
@click.argument("where", metavar="LINK|NODE")
@click.option("-w", "--write", "path", type=click.Path(dir_okay=False), default=None,
              help="write the pcap to FILE (owned by you) instead of standard output")
@click.option("-c", "--count", type=click.IntRange(min=1), default=None, help="stop after N packets")
@click.option("--filter", "bpf", default="", metavar="BPF", help="a capture filter, e.g. 'udp port 55555'")
@click.option("--inner", is_flag=True,
              help="a link's inner packets (raw IP pcap) instead of its frames: UDP hops as they pass (gso "
                   "chunks once their stream is complete), TCP hops when the capture stops")
def capture_cmd(run_id: str, where: str, path: str | None, count: int | None, bpf: str, inner: bool) -> None:
    """Capture the underlay link LINK (e.g. vnf1-vnf2, at its first node's end) or the TUN of NODE."""
    require_root("tunlab capture")
    from tunlab.lab.ledger import open_run

    lab = AttachedLab(open_run(run_id))
    lk = None
    if where in lab.nodes:
        if inner:
            raise TunlabError("--inner decodes a link's encapsulation; a node's TUN already carries inner packets",
                              f"drop --inner, or name a link: {', '.join(x.name for x in lab.links)}")
        node, ifname = where, lab.nodes[where].overlay_dev
    else:
        lk = lab.link_named(where)
        node, ifname = lk.a, lk.a_if
    if path is None and sys.stdout.isatty():
        raise TunlabError("a pcap is binary: not written to a terminal",
                          f"pipe it (tunlab capture {run_id} {where} | wireshark -k -i -) or use -w FILE")
    # -U, --immediate-mode: every packet handed over and written as it comes (Ctrl-C loses nothing); -Z root:
    # tcpdump keeps its rights inside the namespace
    argv = ["tcpdump", "-i", ifname, "-U", "--immediate-mode", "-n", "-s", "0", "-w", "-", "-Z", "root"]
    if count:
        argv += ["-c", str(count)]
    if bpf:
        argv += [bpf]
    out = open(path, "wb") if path else sys.stdout.buffer  # noqa: SIM115 - closed below
    try:
        proc = subprocess.Popen(lab.argv(node, argv), stdout=subprocess.PIPE if inner else out,
                                stdin=subprocess.DEVNULL)
        writer = InnerWriter(out, lab, lk) if inner and lk is not None else None
        try:
            if writer is not None and proc.stdout is not None:
                writer.feed(proc.stdout)
            proc.wait()
        except KeyboardInterrupt:  # Ctrl-C reaches tcpdump too (same process group): let it finish the file
            proc.send_signal(signal.SIGINT)
            if writer is not None and proc.stdout is not None:
                writer.feed(proc.stdout)  # what tcpdump still flushes
            proc.wait()
        if writer is not None:
            writer.finish()  # TCP streams, and chunk streams never completed
    finally:
        if path:
            out.close()
            chown_to_invoking_user(path)
    if proc.returncode not in (0, -signal.SIGINT, 128 + signal.SIGINT) and os.environ.get("TUNLAB_STRICT_CAPTURE"):
        raise TunlabError(f"tcpdump in {node} exited with {proc.returncode}")


# ------------------------------------------------------------------------------------------- --inner

PCAP_HDR = struct.Struct("<IHHiIII")
REC_HDR = struct.Struct("<IIII")
LINKTYPE_ETHERNET, LINKTYPE_RAW, LINKTYPE_LINUX_SLL = 1, 101, 113


def _read(src: IO[bytes], n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = src.read(n - len(buf))
        if not chunk:
            return b""
        buf += chunk
    return buf


def _l3(linktype: int, data: bytes) -> bytes | None:
    if linktype == LINKTYPE_RAW:
        return data
    off = 14 if linktype == LINKTYPE_ETHERNET else 16 if linktype == LINKTYPE_LINUX_SLL else None
    if off is None or len(data) < off:
        return None
    return data[off:] if data[off - 2:off] in (b"\x08\x00", b"\x86\xdd") else None


class InnerWriter:
    """tcpdump's pcap stream of link ``lk`` in, the inner packets out as a raw-IP pcap.

    The link's frames are decoded as the per-hop checks decode them (tunlab.traffic.decap): a UDP datagram
    carries one packet, a gso chunk stream is written once complete, TCP streams are de-framed at the end
    (:meth:`finish`). :meth:`feed` may be called again after an interruption: it goes on where it stopped."""

    def __init__(self, out: IO[bytes], lab: AttachedLab, lk: Any) -> None:
        from tunlab.traffic.decap import RelayEnd

        self.out = out
        self.lk = lk
        self.a = RelayEnd(lk.a, lk.a_addr.split("/")[0], None)
        self.b = RelayEnd(lk.b, lk.b_addr.split("/")[0], None)
        self.overlay = [f"{n.overlay_ip}/32" for n in lab.nodes.values() if n.overlay_ip]
        from tunlab.relay.seal import read_keylog

        keylogs = sorted(lab.ledger.dir.glob("*.keys"))  # a keyed lab: its relays' session keys open the link
        self.keys = {k: v for f in keylogs for k, v in read_keylog(str(f)).items()} if keylogs else None
        self.linktype: int | None = None
        self.pending: list[Any] = []
        self.written = 0

    def feed(self, src: IO[bytes]) -> None:
        from tunlab.traffic.decap import Frame

        if self.linktype is None:
            header = _read(src, PCAP_HDR.size)
            if not header:
                return
            self.linktype = PCAP_HDR.unpack(header)[6]
            self.out.write(PCAP_HDR.pack(0xA1B2C3D4, 2, 4, 0, 0, 65535, LINKTYPE_RAW))
            self.out.flush()
        while True:
            rec = _read(src, REC_HDR.size)
            if not rec:
                return
            sec, usec, incl, _ = REC_HDR.unpack(rec)
            l3 = _l3(self.linktype, _read(src, incl))
            if l3 is not None:
                self.pending.append(Frame(sec + usec / 1e6, l3))
                self._emit(final=False)

    def finish(self) -> None:
        self._emit(final=True)

    def _emit(self, final: bool) -> None:
        from tunlab.traffic.decap import decode_link

        if not self.pending:
            return
        sightings = decode_link(self.pending, self.a, self.b, self.lk.transport, self.overlay, keys=self.keys)
        waiting = any(s.kind == "chunk-error" for s in sightings)
        if not final and (self.lk.transport == "tcp" or (waiting and len(self.pending) < 256)):
            return  # a stream still incomplete: decode it again with the next frames
        for s in sightings:
            if s.kind == "encap" and s.inner:
                sec = int(s.ts)
                self.out.write(REC_HDR.pack(sec, int((s.ts - sec) * 1e6), len(s.inner), len(s.inner)) + s.inner)
                self.written += 1
        self.out.flush()
        self.pending.clear()
