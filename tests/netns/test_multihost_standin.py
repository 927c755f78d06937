"""Issue 19 (1): stand-in hosts are separate machines as far as a lab can tell: their own network, mount
(private /run) and PID namespaces, a real sshd reached by the system ssh through their own namespace."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from multihost_helpers import assert_gone, standin_pids, standins
from tunlab.testing import standin

pytestmark = [pytest.mark.netns, pytest.mark.multihost]


def test_two_standin_hosts_are_separate_machines(tmp_path: Path) -> None:
    with standins(2, tmp_path) as sset:
        assert [h.name for h in sset.hosts] == ["h1", "h2"]
        inv = sset.inventory.read_text()
        assert "h1 ansible_host=h1 underlay=10.77.0.1" in inv and f"ssh_config={sset.ssh_config}" in inv
        # the real ssh client, through the host's own namespace, lands on that host
        for h in sset.hosts:
            res = sset.ssh(h.name, "hostname; ip -4 -o addr show dev eth0; readlink /proc/1/exe")
            assert res.returncode == 0, res.stderr
            lines = res.stdout.split("\n")
            assert lines[0] == h.name and f"inet {h.addr}/24" in lines[1] and lines[2] == standin.SSHD
        # connection sharing: a master serves each host
        assert all(h.master_pid for h in sset.hosts)
        # the LAN joins them
        assert sset.ssh("h2", "ping -c1 -W2 10.77.0.1").returncode == 0
        # a namespace made over ssh on h1 is h1's alone
        ns = f"tls-{sset.id}-probe"
        assert sset.ssh("h1", f"ip netns add {ns}").returncode == 0
        assert ns in sset.ssh("h1", "ip netns list").stdout
        assert ns not in sset.ssh("h2", "ip netns list").stdout
        assert not os.path.lexists(f"/run/netns/{ns}")
        # ... and so is its process table
        h2_ps = sset.ssh("h2", "ps -e -o pid=").stdout.split()
        assert len(h2_ps) < 10  # its sshd, this session, ps: not the machine's processes
        assert standin_pids(sset)
        # and no address in the root namespace belongs to the LAN
        root = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True).stdout
        assert standin.SUBNET not in root
    assert_gone(sset)


def test_standin_down_after_its_creator_was_killed(tmp_path: Path) -> None:
    """The script's `up` in another process, that process gone: `down --dir` removes all by the state file."""
    import sys

    res = subprocess.run([sys.executable, "-m", "tunlab.testing.standin", "up", "-n", "1", "--dir", str(tmp_path)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == str(tmp_path / "hosts.ini")
    sset = standin.StandinSet.load(tmp_path)
    assert sset.ssh("h1", "true").returncode == 0
    res = subprocess.run([sys.executable, "-m", "tunlab.testing.standin", "down", "--dir", str(tmp_path)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert_gone(sset)
