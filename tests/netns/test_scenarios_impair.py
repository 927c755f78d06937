"""Verdicts under impairments (issue 17): the shipped lossy scenario passes, its dropped probes are named
by the relays' decisions, and without the excuse a dropped probe fails naming the impairment, not "lost"."""

from __future__ import annotations

from pathlib import Path

import pytest

from tunlab.model.scenario import load_scenario
from tunlab.run.runner import run_scenario

pytestmark = pytest.mark.netns
ROOT = Path(__file__).resolve().parents[2]


def messages(result) -> list[str]:  # type: ignore[no-untyped-def]
    return [c.message for c in result.checks]


def test_shipped_lossy_scenario_passes_and_names_its_drops(tmp_path: Path) -> None:
    result = run_scenario(load_scenario(str(ROOT / "scenarios" / "lossy_chain.py")), results_root=tmp_path, seed=5)
    assert result.passed, [c.message for c in result.failed] + [result.error or ""]
    named = [m for m in messages(result) if "dropped by impairment on link vnf" in m]
    assert named and all("(loss, decision #" in m for m in named)
    (loss,) = [c for c in result.links if c.name.startswith("loss of")]
    assert loss.passed and "of 40 dropped by impairment" in loss.message


def test_an_unexcused_impairment_drop_fails_naming_it(tmp_path: Path) -> None:
    src = tmp_path / "all_lost.py"
    src.write_text("from tunlab import Udp\nfrom tunlab.model.topology import linear_chain\n"
                   "topology = linear_chain(1, impair={'vnf1-receiver': 'loss=100%'})\n"
                   "traffic = [Udp(5000, count=2)]\n")
    result = run_scenario(load_scenario(str(src)), results_root=tmp_path / "r", seed=1)
    assert not result.passed
    delivered = [c for c in result.failed if c.name == "delivered"]
    assert len(delivered) == 2
    for c in delivered:
        assert "never reached receiver: last seen on vnf1 TUN out, dropped by impairment on link " \
               "vnf1>receiver (loss, decision #" in c.message, c.message
        assert "lost at" not in c.message
