"""The command line: help text, --print-config, one-line errors, and what the start-up path imports."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from tunlab.cli import cli
from tunlab.errors import NeedRoot, TunlabError
from tunlab.relay import device as device_mod

ROOT = Path(__file__).resolve().parents[2]
PY = sys.executable  # the interpreter running the tests (the project venv's)


def run_tunlab(*args: str, user: int | None = None) -> subprocess.CompletedProcess[str]:
    argv = [PY, "-m", "tunlab", *args]
    if user is not None:
        argv = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *argv]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=str(ROOT))


def test_help_documents_tunconnector_and_native_options() -> None:
    res = CliRunner().invoke(cli, ["relay", "--help"])
    assert res.exit_code == 0
    for needle in ["-p, --serverinterface", "-n, --clientinterface", "-s, --serverip", "-c, --clientip",
                   "-o, --outport", "-i, --inport", "-r, --remoteip", "-m, --mode", "--transport", "--tap",
                   "--attach", "--listen", "--peer", "--accept", "--route", "--vnf", "--hook", "--ready-fd",
                   "--control", "--stats-file", "--log-level", "--log-file", "55555", "55556", "tun1",
                   "192.168.1.2", "192.168.0.2", "tunlab relay -p tun0 -s 10.0.0.2 -i 55555 -m server",
                   "2-byte big-endian length", "first source", "two clients pointed at"]:
        assert needle in res.output, needle


def test_print_config_shows_both_parts() -> None:
    res = CliRunner().invoke(cli, ["relay", "-r", "10.1.0.2", "--transport", "tcp", "--print-config"])
    assert res.exit_code == 0, res.output
    parts = json.loads(res.output)
    assert [p["label"] for p in parts] == ["server", "client"]
    assert parts[0]["listen"] == "0.0.0.0:55556" and parts[1]["peers"][0]["port"] == 55555


def test_bad_option_is_one_line() -> None:
    res = run_tunlab("relay", "--peer", "x=10.0.0.1:5", "--route", "10.0.0.1/24=x")
    assert res.returncode == 2
    assert res.stderr.strip().count("\n") == 0
    assert res.stderr.startswith("tunlab: --route:") and "10.0.0.0/24" in res.stderr


def test_bad_ready_fd_is_one_line() -> None:
    res = run_tunlab("relay", "--peer", "x=10.0.0.1:5", "--ready-fd", "987")
    assert res.returncode == 2 and res.stderr.strip() == "tunlab: --ready-fd: 987 is not an open file descriptor"


@pytest.mark.skipif(os.geteuid() != 0, reason="dropping to another user needs root; as non-root see below")
def test_not_root_is_one_line_as_nobody(tmp_path: Path) -> None:
    res = run_tunlab("relay", "--dev", "t2rnoroot", "--peer", "x=127.0.0.1:5", user=65534)
    assert res.returncode == 3, res.stderr  # ExitCode.CANNOT_RUN
    assert res.stderr.strip().count("\n") == 0
    assert "needs root" in res.stderr and "sudo" in res.stderr and "Traceback" not in res.stderr


@pytest.mark.skipif(os.geteuid() == 0, reason="as root the device would really be created")
def test_not_root_is_one_line() -> None:
    res = run_tunlab("relay", "--dev", "t2rnoroot", "--peer", "x=127.0.0.1:5")
    assert res.returncode == 3 and "needs root" in res.stderr and res.stderr.strip().count("\n") == 0


def test_missing_dev_net_tun_is_explained(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(device_mod, "TUN_PATH", "/nonexistent/net/tun")
    with pytest.raises(TunlabError) as info:
        device_mod.open_device("t2rnotun")
    assert "/nonexistent/net/tun is missing" in str(info.value) and "modprobe tun" in str(info.value)
    assert not isinstance(info.value, NeedRoot)


def test_attach_to_missing_device_is_explained() -> None:
    with pytest.raises(TunlabError, match="no device 't2rnothere'"):
        device_mod.open_device("t2rnothere", attach=True)


def test_relay_stats_without_relay_is_one_line(tmp_path: Path) -> None:
    res = run_tunlab("relay-stats", str(tmp_path / "none.sock"))
    assert res.returncode == 2
    assert res.stderr.strip() == f"tunlab: no control socket at {tmp_path / 'none.sock'} (is the relay running with --control?)"


def test_startup_path_imports_no_heavy_packages() -> None:
    # what `tunlab relay --attach ...` imports before and while it moves packets
    code = ("import sys, tunlab.cli, tunlab.relay.command, tunlab.relay.engine, tunlab.relay.device, "
            "tunlab.relay.transport, tunlab.relay.control, tunlab.relay.datapath;"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('pyroute2', 'scapy', 'rich')))")
    res = subprocess.run([PY, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"


def test_the_relay_command_as_run_imports_no_heavy_packages() -> None:
    # the whole `tunlab relay ...` entry (the tunlab group, its output set-up, option parsing): what every lab
    # relay pays at start-up (rich alone costs ~0.2 s, enough to miss a peer's first hellos on a busy machine)
    code = ("import sys, atexit; atexit.register(lambda: print(sorted(m for m in sys.modules if m.split('.')[0] "
            "in ('pyroute2', 'scapy', 'rich')), file=sys.stderr)); from tunlab.cli import main; "
            "main(['relay', '--print-config', '--dev', 'x0', '--addr', '10.9.0.1/24', '--listen', '127.0.0.1:1', "
            "'--peer', 'b=127.0.0.1:2'])")
    res = subprocess.run([PY, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stderr.strip().splitlines()[-1] == "[]"


def test_public_api() -> None:
    import tunlab.relay as relay

    assert sorted(relay.__all__) == ["PeerSpec", "Relay", "RelayConfig", "RouteSpec", "control_request", "query_stats",
                                   "register_command", "serve"]
