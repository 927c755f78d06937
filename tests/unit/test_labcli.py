"""`tunlab show/up/down/ls/exec/clean` without root: show and ls work, the others explain in one line."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from tunlab.cli import main
from tunlab.lab.ledger import Ledger


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main(args)
    out, err = capsys.readouterr()
    return int(info.value.code or 0), out, err


@pytest.fixture
def not_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setenv("TUNLAB_RUN_ROOT", str(tmp_path / "runs"))
    monkeypatch.setenv("COLUMNS", "200")
    return tmp_path / "runs"


def test_show_prints_nodes_links_addresses_and_hops(not_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(["show", "fork", "--routes"], capsys)
    assert code == 0, err
    for text in ("classifier", "172.16.0.10", "10.0.1.1/30", "sender -> classifier -> fw_a -> rx_a",
                 "172.16.1.0/24 -> fw_a", "172.16.2.0/24 -> fw_b", "udp"):
        assert text in out, text


def test_show_takes_parameters(not_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["show", "linear", "-p", "n_vnfs=12", "-p", "transport=tcp"], capsys)
    assert code == 0 and "vnf12" in out and "tcp (b listens)" in out
    code, out, _ = run(["show", "three_vnf", "-p", "datapath=gso"], capsys)
    assert code == 0 and "udp, datapath gso" in out


@pytest.mark.parametrize(("args", "match"), [
    (["show", "nope"], "tunlab: no topology named 'nope'"),
    (["show", "linear", "-p", "n_vnfs=-3"], "tunlab: .*linear.py, linear_chain field 'n_vnfs'"),
    (["show", "linear", "-p", "colour"], "tunlab: --param: parameter 'colour' is not NAME=VALUE"),
    (["up", "three_vnf"], "tunlab: tunlab up needs root .*run it with sudo"),
    (["down"], "tunlab: tunlab down needs root"),
    (["exec", "sender", "--", "true"], "tunlab: tunlab exec needs root"),
    (["clean"], "tunlab: tunlab clean needs root"),
])
def test_errors_are_one_line(not_root: Path, capsys: pytest.CaptureFixture[str], args: list[str],
                             match: str) -> None:
    code, out, err = run(args, capsys)
    assert code != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert __import__("re").match(match, lines[0]), lines[0]


def test_ls_lists_runs_and_their_state(not_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["ls"], capsys)
    assert code == 0 and "no tunlab runs" in out
    mine = Ledger.create({"backend": "netns", "topology": "three_vnf", "nodes": {"a": {}, "b": {}}}, root=not_root)
    gone = Ledger.create({"backend": "netns", "topology": "fork"}, root=not_root)
    gone.update_meta(owner={"pid": 2 ** 22 + 1, "start": 1})
    code, out, _ = run(["ls"], capsys)
    rows = {line.split()[1]: line for line in out.splitlines() if mine.run_id in line or gone.run_id in line}
    assert "running" in rows[mine.run_id] and "three_vnf" in rows[mine.run_id]
    assert "dead" in rows[gone.run_id] and "fork" in rows[gone.run_id]


def test_clicks_help_lists_the_lab_commands() -> None:
    from tunlab.cli import cli

    res = CliRunner().invoke(cli, ["--help"])
    for name in ("show", "up", "down", "ls", "exec", "clean"):
        assert f"  {name} " in res.output


def test_show_names_the_interfaces_a_lab_gets(not_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["show", "fork"], capsys)
    assert code == 0
    assert "sender ve-RUN-0a 10.0.0.1/30" in out and "rx_b ve-RUN-4b 10.0.2.6/30" in out and "tun-RUN" in out


def test_show_lists_nsh_service_paths(not_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    scenario = Path(__file__).resolve().parents[2] / "scenarios" / "nsh_firewall.py"
    code, out, err = run(["show", str(scenario)], capsys)
    assert code == 0, err
    for text in ("NSH service paths", "sender -> vnf1* -> vnf2 -> receiver", "100 -> 99", "proto udp, dport 5000",
                 "sender -> vnf1* -> vnf2* -> receiver", "255 -> 253"):
        assert text in out, text
