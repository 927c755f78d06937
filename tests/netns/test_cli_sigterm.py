"""SIGTERM to `tunlab run` while its lab is up: the lab is torn down as on Ctrl-C, nothing is left."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tunlab.lab.ledger import tagged_pids

pytestmark = pytest.mark.netns

ROOT = Path(__file__).resolve().parents[2]


def _running_run(runs: Path, pid: int) -> str | None:
    """The run id whose meta.json names ``pid`` as owner and says the lab is running."""
    for meta in runs.glob("*/meta.json"):
        try:
            m = json.loads(meta.read_text())
        except (OSError, ValueError):
            continue
        if (m.get("owner") or {}).get("pid") == pid and m.get("state") == "running":
            return meta.parent.name
    return None


def test_sigterm_during_a_run_tears_the_lab_down(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    scenario = tmp_path / "slow.py"
    # a long settle keeps the lab up long enough to be signalled while it runs
    scenario.write_text('from tunlab.model.scenario import Ping\ntopology = "three_vnf"\ntraffic = [Ping()]\n'
                        "settle = 30\ntimeout = 40\n")
    env = {**os.environ, "TUNLAB_RUN_ROOT": str(runs)}
    proc = subprocess.Popen([sys.executable, "-m", "tunlab", "run", str(scenario)], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        run_id = None
        while run_id is None and proc.poll() is None and time.monotonic() < deadline:
            run_id = _running_run(runs, proc.pid)
            time.sleep(0.02)  # polling interval of a readiness check with a deadline
        assert run_id is not None, "the lab never reported running"
        namespaces = [ns for ns in os.listdir("/run/netns") if f"-{run_id}-" in ns]
        assert namespaces and tagged_pids(run_id)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 128 + signal.SIGTERM
        assert [ns for ns in os.listdir("/run/netns") if f"-{run_id}-" in ns] == []
        assert tagged_pids(run_id) == []
        assert not (runs / run_id).exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if runs.exists() and any(runs.iterdir()):  # a failed run: remove what it recorded, by ownership
            subprocess.run([sys.executable, "-m", "tunlab", "clean"], env=env, cwd=ROOT, capture_output=True)
