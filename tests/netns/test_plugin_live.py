"""The plugin's privileged parts on real namespaces: the gating probe, link captures, the leak check."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest

from tunlab.errors import TunlabError
from tunlab.lab.ledger import log_run, proc_start_time
from tunlab.testing import gating, leaks
from tunlab.traffic.capture import Capture, CapturePoint

pytestmark = pytest.mark.netns


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@pytest.fixture
def netns() -> Generator[str, None, None]:
    """A namespace of this test (prefix p5pl), with lo up; removed afterwards."""
    name = f"p5pl{uuid.uuid4().hex[:8]}"
    log_run(name)  # scripts/suite.py's leak check judges this suite's own names only
    _ip("netns", "add", name)
    try:
        _ip("-n", name, "link", "set", "lo", "up")
        yield name
    finally:
        _ip("netns", "delete", name)


def _popen_in(ns: str) -> Any:
    def popen(argv: list[str], **kw: Any) -> subprocess.Popen[bytes]:
        return subprocess.Popen(["ip", "netns", "exec", ns, *argv], **kw)
    return popen


def test_netns_check_passes_here() -> None:
    assert gating.netns_unavailable_reason() is None


def test_spooled_capture_is_ready_before_traffic_and_written_as_it_comes(netns: str, tmp_path: Path) -> None:
    from scapy.layers.inet import ICMP
    from scapy.utils import rdpcap

    cap = Capture([CapturePoint("link:lo", f"/run/netns/{netns}", "lo", "ip")], spool=tmp_path / "pcaps")
    with cap:
        # no wait between entering and sending: __enter__ returned only once the socket was bound
        subprocess.run(["ip", "netns", "exec", netns, "ping", "-c", "3", "-i", "0.01", "-W", "1", "127.0.0.1"],
                       check=True, capture_output=True)
        assert cap.wait_for(lambda _: cap.counts["link:lo"] >= 6, timeout=10)
        # already on disk while the capture runs (flushed after every batch), as tcpdump -U would
        echoes = [p for p in rdpcap(str(tmp_path / "pcaps" / "link_lo.pcap")) if p.haslayer(ICMP)]
        assert [p[ICMP].type for p in echoes].count(8) == 3  # every request, none lost to a late start
        with pytest.raises(ValueError, match="keeps no frames in memory"):
            cap.frames()
    assert cap.files == [tmp_path / "pcaps" / "link_lo.pcap"]


def test_capture_on_missing_interface_fails_naming_it(netns: str, tmp_path: Path) -> None:
    cap = Capture([CapturePoint("link:x", f"/run/netns/{netns}", "nosuchdev", "ip")], spool=tmp_path)
    with pytest.raises(TunlabError, match=r"cannot capture on nosuchdev for link:x: No such device"):
        cap.__enter__()


def test_leak_check_finds_namespaces_and_tagged_processes() -> None:
    run_id = f"p5{uuid.uuid4().hex[:6]}"
    log_run(run_id)
    ours, bystander = f"tl-{run_id}-a", f"tl-{run_id}x-b"   # the bystander only contains the id in a longer word
    _ip("netns", "add", ours)
    _ip("netns", "add", bystander)
    # the child must have exec'd (its /proc environ is the tagged one) before the check: wait for its line
    proc = subprocess.Popen([sys.executable, "-c", "import time; print('up', flush=True); time.sleep(60)"],
                            env={**os.environ, "TUNLAB_RUN": run_id}, stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"up\n"
        rec = leaks.Recorded(run_id=run_id)
        found = leaks.leftovers(rec)
        assert found == [f"namespace {ours}", f"process {proc.pid}"]
        msg = leaks.leak_message(rec, found)
        assert ours in msg and str(proc.pid) in msg and "\n" not in msg
        # a recorded pid whose start time differs is another process that reused the pid: not ours
        rec2 = leaks.Recorded(run_id="p5none", pids={proc.pid: (proc_start_time(proc.pid) or 0) + 1})
        assert leaks.leftovers(rec2) == []
    finally:
        proc.kill()
        proc.wait()
        _ip("netns", "delete", ours)
        _ip("netns", "delete", bystander)
    assert leaks.leftovers(leaks.Recorded(run_id=run_id)) == []
