"""`tunlab capture RUN LINK|NODE`: a live pcap of one link (its underlay veth) or one node's TUN, to standard
output (pipe it into Wireshark: ``sudo tunlab capture RUN sender-vnf1 | wireshark -k -i -``) or a file.

tcpdump runs inside the lab's namespace (nothing is captured in the root namespace); Ctrl-C stops it cleanly
and the pcap is complete. "listening on ..." on standard error says when the capture is ready.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

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
def capture_cmd(run_id: str, where: str, path: str | None, count: int | None, bpf: str) -> None:
    """Capture the underlay link LINK (e.g. vnf1-vnf2, at its first node's end) or the TUN of NODE."""
    require_root("tunlab capture")
    from tunlab.lab.ledger import Ledger

    lab = AttachedLab(Ledger.open(run_id))
    if where in lab.nodes:
        node, ifname = where, lab.nodes[where].overlay_dev
    else:
        lk = lab.link_named(where)
        node, ifname = lk.a, lk.a_if
    if path is None and sys.stdout.isatty():
        raise TunlabError("a pcap is binary: not written to a terminal",
                          f"pipe it (tunlab capture {run_id} {where} | wireshark -k -i -) or use -w FILE")
    # -U: every packet flushed as it comes; -Z root: tcpdump keeps its rights inside the namespace
    argv = ["tcpdump", "-i", ifname, "-U", "-n", "-s", "0", "-w", "-", "-Z", "root"]
    if count:
        argv += ["-c", str(count)]
    if bpf:
        argv += [bpf]
    out = open(path, "wb") if path else sys.stdout.buffer  # noqa: SIM115 - closed below
    try:
        proc = subprocess.Popen(lab.argv(node, argv), stdout=out, stdin=subprocess.DEVNULL)
        try:
            proc.wait()
        except KeyboardInterrupt:  # Ctrl-C reaches tcpdump too (same process group): let it finish the file
            proc.send_signal(signal.SIGINT)
            proc.wait()
    finally:
        if path:
            out.close()
            chown_to_invoking_user(path)
    if proc.returncode not in (0, -signal.SIGINT, 128 + signal.SIGINT) and os.environ.get("TUNLAB_STRICT_CAPTURE"):
        raise TunlabError(f"tcpdump in {node} exited with {proc.returncode}")
