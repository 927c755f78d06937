"""`tunlab run` without root and with bad files: one line, no traceback, the right exit code (no root)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tunlab import cli
from tunlab.system import privileges

ROOT = Path(__file__).resolve().parents[2]


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    out, err = capsys.readouterr()
    return int(info.value.code or 0), out, err


def test_non_root_gets_one_line(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(privileges.os, "geteuid", lambda: 1000)
    code, _, err = run(["run", str(ROOT / "scenarios" / "three_vnf.py")], capsys)
    assert code == 3  # ExitCode.CANNOT_RUN, not 1 (a failed check)
    assert err.strip().count("\n") == 0 and "needs root" in err and "sudo" in err
    assert "Traceback" not in err


def test_bad_scenario_file_is_one_line_naming_file_and_field(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    monkeypatch.setattr(privileges.os, "geteuid", lambda: 0)
    good = ROOT / "scenarios" / "three_vnf.py"
    bad = tmp_path / "bad.py"
    bad.write_text('from tunlab.model.scenario import Ping\ntopology = "three_vnf"\ntraffic = [Ping(size=5)]\n')
    code, _, err = run(["run", str(good), str(bad)], capsys)  # the good one must not start: files load first
    assert code == 2
    assert err.strip().count("\n") == 0 and f"{bad}, traffic[0].size" in err and "'mtu'" in err


def test_help_lists_the_options(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["run", "--help"], capsys)
    assert code == 0
    for option in ("--keep", "--results", "--junit", "--backend", "--quiet"):
        assert option in out
