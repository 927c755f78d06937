"""`tunlab run --json`, its exit codes and seed, ASCII output, and named labs, on real labs."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.netns

ROOT = Path(__file__).resolve().parents[2]


def tunlab(*args: str, env: dict[str, str] | None = None, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tunlab", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=240, env={**os.environ, "COLUMNS": "200", **(env or {})})


def test_run_json_passes_with_its_seed(tmp_path: Path) -> None:
    res = tunlab("run", "--json", "--seed", "1234", "--results", str(tmp_path), "three_vnf")  # a shipped name
    assert res.returncode == 0, res.stdout + res.stderr
    data = json.loads(res.stdout)
    assert data["schema"] == "tunlab.run/1" and data["passed"] is True and data["seed"] == 1234
    sc = data["scenarios"][0]
    assert sc["passed"] and sc["seed"] == 1234 and sc["failed"] == [] and len(sc["checks"]) > 5
    assert "running three_vnf" in res.stderr  # progress on stderr, the JSON alone on stdout


def test_failed_check_exits_1_and_prints_a_replayable_seed(tmp_path: Path) -> None:
    bad = tmp_path / "wrong_expectation.py"
    bad.write_text('from tunlab import Ping\ntopology = "three_vnf"\ntraffic = [Ping(expect="dropped at vnf2")]\n')
    res = tunlab("run", "-q", "--results", str(tmp_path / "res"), str(bad), env={"PYTHONIOENCODING": "ascii"})
    assert res.returncode == 1, res.stdout + res.stderr
    assert "FAIL wrong_expectation" in res.stdout and "Traceback" not in res.stderr
    res.stdout.encode("ascii")
    m = re.search(r"seed (\d+): replay the same packets with tunlab run --seed \1 ", res.stdout)
    assert m, res.stdout
    again = tunlab("run", "--json", "--seed", m.group(1), "--results", str(tmp_path / "res"), str(bad))
    assert again.returncode == 1
    data = json.loads(again.stdout)
    assert data["seed"] == int(m.group(1)) and data["scenarios"][0]["failed"] and data["exit_code"] == 1
    folder = Path(data["scenarios"][0]["results_dir"])
    assert f"seed {m.group(1)}" in (folder / "report.txt").read_text()
    # the relay logs say what each relay did (they were empty)
    log = (folder / "vnf2.log").read_text()
    assert "ready: TUN device" in log and "peer vnf1: datapath" in log, log


def test_big_lab_up_shows_progress_and_a_summary_line() -> None:
    up = tunlab("up", "linear", "-p", "n_vnfs=20", env={"TUNLAB_PROGRESS_AFTER": "0"})
    assert up.returncode == 0, up.stderr
    run_id = re.search(r"lab (\w{4}) \(linear20, 22 nodes\) is up", up.stdout).group(1)  # type: ignore[union-attr]
    try:
        assert re.search(rf"tunlab up: {run_id}: \w+: nodes \d+/22, relays \d+/22", up.stderr), up.stderr
        assert "nodes: sender, vnf1, vnf2, vnf3 ... receiver" in up.stdout or "... " in up.stdout, up.stdout
        assert len(up.stdout.splitlines()) <= 4, up.stdout  # not a row per node
    finally:
        down = tunlab("down", run_id)
    assert down.returncode == 0, down.stderr


def test_named_lab_up_exec_ls_down() -> None:
    name = f"h15-{os.getpid()}"
    up = tunlab("up", "linear", "-p", "n_vnfs=1", "--name", name)
    assert up.returncode == 0, up.stderr
    run_id = re.search(r"lab (\w{4}) \(" + re.escape(name) + r"\)", up.stdout).group(1)  # type: ignore[union-attr]
    try:
        assert f"tunlab exec --run {name} sender -- ip addr" in up.stdout
        ls = json.loads(tunlab("ls", "--json").stdout)["runs"]
        row = next(r for r in ls if r["run"] == run_id)
        assert row["name"] == name and row["state"] == "up" and row["user"]
        ping = tunlab("exec", "--run", name, "sender", "--", "ping", "-c", "1", "-W", "3", "172.16.0.2")
        assert ping.returncode == 0 and "1 received" in ping.stdout
        dup = tunlab("up", "linear", "--name", name)
        assert dup.returncode == 2 and "already has that name" in dup.stderr
    finally:
        down = tunlab("down", name)
    assert down.returncode == 0 and f"run {run_id}: removed" in down.stdout, down.stderr
