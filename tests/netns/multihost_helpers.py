"""Stand-in hosts for the multihost tests (tunlab.testing.standin), made and removed around a test module."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tunlab.system.procs import process_alive
from tunlab.testing import standin


def standin_pids(sset: standin.StandinSet) -> list[int]:
    """Every process in the root's /proc tagged with the set's id (sandboxes and all they started)."""
    tag = f"{standin.ENV_TAG}={sset.id}".encode()
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            env = Path(f"/proc/{d}/environ").read_bytes()
        except OSError:
            continue
        if tag in env.split(b"\0"):
            out.append(int(d))
    return out


def assert_gone(sset: standin.StandinSet) -> None:
    """Nothing of the set is left: no LAN namespace, no recorded process, no tagged process."""
    assert not os.path.lexists(f"/run/netns/{sset.lan_netns}")
    for h in sset.hosts:
        for pid, start in ((h.pid, h.start), (h.unshare_pid, h.unshare_start), (h.master_pid, h.master_start)):
            assert not (pid and process_alive(pid, start)), f"{h.name}: process {pid} still alive"
    assert standin_pids(sset) == []
    assert not (sset.dir / standin.STATE).exists()


@contextmanager
def standins(n: int, tmp: Path) -> Iterator[standin.StandinSet]:
    sset = standin.up(n, tmp)
    try:
        yield sset
    finally:
        problems = standin.down(sset)
        assert problems == [], problems
        assert_gone(sset)


def inventory_of(sset: standin.StandinSet, hosts: list[str], path: Path, **per_host: str) -> Path:
    """An inventory with some of the set's hosts (``per_host``: extra fields, e.g. h2="tunlab=/nonexistent")."""
    lines = [ln for ln in sset.inventory.read_text().splitlines()
             if not ln.startswith("h") or ln.split()[0] in hosts]
    lines = [f"{ln} {per_host[ln.split()[0]]}" if ln.startswith("h") and ln.split()[0] in per_host else ln
             for ln in lines]
    path.write_text("\n".join(lines) + "\n")
    return path


def host_leftovers(sset: standin.StandinSet, run_id: str) -> dict[str, str]:
    """What run ``run_id`` left on each stand-in host: run directory, namespaces, nftables table, uplinks."""
    out = {}
    for h in sset.hosts:
        res = sset.ssh(h.name, f"ls /run/tunlab 2>/dev/null | grep -x {run_id}; ip netns list | grep tl-{run_id}-; "
                               f"nft list tables | grep tunlab_{run_id}; ip -o link | grep vh-{run_id}-; true")
        assert res.returncode == 0, res.stderr
        if res.stdout.strip():
            out[h.name] = res.stdout.strip()
    return out


def run_pids(run_id: str) -> list[int]:
    """Processes tagged TUNLAB_RUN=<run_id> anywhere on this machine (the root sees every sandbox's)."""
    from tunlab.lab.ledger import tagged_pids

    return tagged_pids(run_id)
