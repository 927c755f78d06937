"""`tunlab up`, `exec`, `ls`, `down` as a user types them."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tunlab.lab.ledger import tagged_pids

pytestmark = pytest.mark.netns

ROOT = Path(__file__).resolve().parents[2]


def tunlab(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    res = subprocess.run([sys.executable, "-m", "tunlab", *args], capture_output=True, text=True, cwd=ROOT,
                         timeout=120, env={**os.environ, "COLUMNS": "200"})
    if check and res.returncode != 0:
        raise AssertionError(f"tunlab {' '.join(args)} -> {res.returncode}: {res.stderr}")
    return res


def test_up_exec_ls_down(tmp_path: Path) -> None:
    up = tunlab("up", "linear", "-p", "n_vnfs=2", "--results", str(tmp_path))
    m = re.search(r"lab (\w{4}) \(linear2, 4 nodes\) is up", up.stdout)
    assert m, up.stdout
    run_id = m.group(1)
    try:
        assert f"tl-{run_id}-vnf2" in up.stdout
        ping = tunlab("exec", "--run", run_id, "sender", "--", "ping", "-c", "1", "-W", "3", "172.16.0.2")
        assert "1 received" in ping.stdout
        addr = tunlab("exec", "--run", run_id, "receiver", "ip", "-o", "addr", "show", f"tun-{run_id}")
        assert "172.16.0.2/16" in addr.stdout
        missing = tunlab("exec", "--run", run_id, "nobody", "--", "true", check=False)
        assert missing.returncode != 0 and f"run {run_id} has no node 'nobody'" in missing.stderr
        ls = tunlab("ls")
        assert re.search(rf"{run_id}\s.*\sup\s.*linear2", ls.stdout), ls.stdout
        clean = tunlab("clean", run_id)
        assert "is up: left alone" in clean.stdout
        assert os.path.exists(f"/run/netns/tl-{run_id}-sender")
    finally:
        down = tunlab("down", run_id)
    assert f"run {run_id}: removed" in down.stdout
    assert not [n for n in os.listdir("/run/netns") if n.startswith(f"tl-{run_id}-")]
    assert tagged_pids(run_id) == []
    kept = tmp_path / run_id
    assert (kept / "vnf1.stats.json").exists() and (kept / "sender.out").exists()
    again = tunlab("down", run_id, check=False)
    assert again.returncode != 0 and f"there is no run '{run_id}'" in again.stderr
