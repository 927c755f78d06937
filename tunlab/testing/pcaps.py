"""pcaps of every link of a lab, taken with tcpdump inside the nodes' namespaces for the test's life.

Each capture is confirmed running (tcpdump's "listening on" line) before the test body starts, so nothing
sent by the test can be missed; stopping it (SIGTERM) makes tcpdump flush the file.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from tunlab.errors import TunlabError

Popen = Callable[..., "subprocess.Popen[bytes]"]


@dataclass
class LinkPcap:
    label: str
    iface: str
    path: Path
    proc: subprocess.Popen[bytes]


def tcpdump_argv(iface: str, path: Path) -> list[str]:
    # -Z root: keep the file ours (Debian's tcpdump drops to user tcpdump); -U: write each packet as it comes
    return ["tcpdump", "-i", iface, "-w", str(path), "-U", "-n", "-s", "0", "--immediate-mode", "-Z", "root"]


def _wait_listening(caps: Sequence[LinkPcap], timeout: float) -> None:
    """Block until every tcpdump said "listening on", or raise naming the ones that did not."""
    deadline = time.monotonic() + timeout
    pending = {c.proc.stderr.fileno(): c for c in caps if c.proc.stderr is not None}
    text: dict[int, bytes] = {fd: b"" for fd in pending}
    while pending:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        ready, _, _ = select.select(list(pending), [], [], left)
        for fd in ready:
            chunk = os.read(fd, 4096)
            text[fd] += chunk
            if b"listening on" in text[fd] or not chunk:
                cap = pending.pop(fd)
                if not chunk and b"listening on" not in text[fd]:
                    msg = text[fd].decode(errors="replace").strip().splitlines()
                    raise TunlabError(f"capture on {cap.label} (tcpdump -i {cap.iface}) did not start: "
                                      f"{msg[-1] if msg else 'no output'}")
    if pending:
        names = ", ".join(c.label for c in pending.values())
        raise TunlabError(f"capture on {names} not ready after {timeout:.0f} s")


def start(targets: Sequence[tuple[str, Popen, str, Path]], timeout: float = 10.0) -> list[LinkPcap]:
    """Start one tcpdump per (label, popen-in-namespace, interface, pcap path); return once all listen."""
    caps: list[LinkPcap] = []
    try:
        for label, popen, iface, path in targets:
            path.parent.mkdir(parents=True, exist_ok=True)
            proc = popen(tcpdump_argv(iface, path), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE)
            caps.append(LinkPcap(label, iface, path, proc))
        _wait_listening(caps, timeout)
    except BaseException:
        stop(caps)
        raise
    return caps


def stop(caps: Sequence[LinkPcap], timeout: float = 5.0) -> None:
    """Stop every capture (SIGTERM: tcpdump flushes and exits); kill the ones that do not exit in time."""
    for cap in caps:
        if cap.proc.poll() is None:
            cap.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for cap in caps:
        try:
            cap.proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            cap.proc.kill()
            cap.proc.wait()
        if cap.proc.stderr is not None:
            cap.proc.stderr.close()
