"""Issue 19 (2): `tunlab hosts check` over real ssh to stand-in hosts: one line per problem, naming the host."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from multihost_helpers import standins
from tunlab.testing import standin

pytestmark = [pytest.mark.netns, pytest.mark.multihost]


@pytest.fixture(scope="module")
def sset(tmp_path_factory: pytest.TempPathFactory) -> Iterator[standin.StandinSet]:
    with standins(2, tmp_path_factory.mktemp("standin")) as s:
        yield s


def hosts_check(inventory: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tunlab", "hosts", "check", "--hosts", str(inventory)],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "300"})


def test_ready_hosts_pass_in_one_round_trip_each(sset: standin.StandinSet) -> None:
    res = hosts_check(sset.inventory)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "2 host(s) ready: h1, h2 (2 ssh round trips)"


def test_missing_tunlab_unreachable_host_and_wrong_underlay(sset: standin.StandinSet, tmp_path: Path) -> None:
    text = sset.inventory.read_text()
    text = text.replace("h2 ansible_host=h2 underlay=10.77.0.2", "h2 ansible_host=h2 underlay=10.77.0.2 tunlab=/nonexistent/tunlab")
    text += "h3 ansible_host=h3 underlay=10.77.0.3\n"  # no such host: ssh cannot resolve it
    bad = tmp_path / "hosts.ini"
    bad.write_text(text)
    res = hosts_check(bad)
    assert res.returncode == 3
    lines = res.stderr.strip().splitlines()
    assert lines[-1] == f"tunlab: 4 problem(s) on the hosts of {bad}"
    problems = lines[:-1]
    assert len(problems) == 4, problems
    assert any(p.startswith("tunlab: host h2: tunlab missing (no command '/nonexistent/tunlab')") for p in problems)
    assert not any(p.startswith("tunlab: host h1: tunlab") for p in problems)
    assert any(p.startswith("tunlab: host h3 (ssh h3): unreachable:") for p in problems)
    assert sum("cannot reach host h3's underlay 10.77.0.3" in p for p in problems) == 2
    # an underlay the host does not hold
    wrong = tmp_path / "wrong.ini"
    wrong.write_text(sset.inventory.read_text().replace("underlay=10.77.0.2", "underlay=10.77.0.9"))
    res = hosts_check(wrong)
    assert res.returncode == 3
    assert "tunlab: host h2: underlay 10.77.0.9 is not an address of this host" in res.stderr
    assert "tunlab: host h1: cannot reach host h2's underlay 10.77.0.9" in res.stderr
