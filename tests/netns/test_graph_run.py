"""`tunlab graph RUN` draws a running lab as it was built, with each relay's state from its control socket."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tunlab import Lab, load_topology

pytestmark = pytest.mark.netns


def _graph(run_id: str, fmt: str = "mermaid") -> str:
    return subprocess.run([sys.executable, "-m", "tunlab", "graph", run_id, "--format", fmt], capture_output=True,
                          text=True, check=True).stdout


def test_graph_of_a_running_lab_shows_relay_states() -> None:
    with Lab(load_topology("three_vnf")) as lab:
        before = _graph(lab.run_id)
        assert "relay up" in before and "relay dead" not in before
        assert "class n_vnf2 up" in before
        lab.kill_relay("vnf2")
        after = _graph(lab.run_id)
        assert "class n_vnf2 dead" in after and "class n_vnf1 up" in after
        dot = _graph(lab.run_id, "dot")
        assert '"vnf2" [shape=ellipse, label="vnf2\\n172.16.1.2\\nkernel, nftables\\nrelay dead", color=red]' in dot


def test_graph_of_a_lab_by_its_name() -> None:
    """`tunlab up --name NAME` then `tunlab graph NAME` (the README's flow); a topology's name still wins."""
    import secrets

    name = f"graph-{secrets.token_hex(3)}"
    up = subprocess.run([sys.executable, "-m", "tunlab", "up", "three_vnf", "--name", name], capture_output=True,
                        text=True)
    assert up.returncode == 0, up.stderr
    try:
        drawn = _graph(name)
        assert "relay up" in drawn and "class n_vnf2 up" in drawn
        assert "relay" not in _graph("three_vnf")  # the topology, not a running lab
        missing = subprocess.run([sys.executable, "-m", "tunlab", "graph", f"{name}-nowhere"], capture_output=True,
                                 text=True)
        assert missing.returncode != 0 and "no topology named" in missing.stderr
    finally:
        down = subprocess.run([sys.executable, "-m", "tunlab", "down", name], capture_output=True, text=True)
    assert down.returncode == 0, down.stderr
