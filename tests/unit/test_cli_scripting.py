"""The command line for scripts and shared machines (no root needed): --json shapes, exit codes, ASCII output,
bring-up progress, `clean -n`, owners and names of runs, bare down/exec/clean acting on the caller's runs only."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tunlab.cli import main
from tunlab.errors import ExitCode
from tunlab.lab.ledger import Ledger

ROOT = Path(__file__).resolve().parents[2]
ME, OTHER = 4242, 4343


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main(args)
    out, err = capsys.readouterr()
    return int(info.value.code or 0), out, err


def tunlab(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tunlab", *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})}, cwd=ROOT)


@pytest.fixture
def runs(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A run root of our own, and a caller who is root through sudo as user ME."""
    monkeypatch.setenv("TUNLAB_RUN_ROOT", str(tmp_path / "runs"))
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setenv("SUDO_UID", str(ME))
    monkeypatch.setenv("SUDO_GID", str(ME))
    return tmp_path / "runs"


def make_run(root: Path, *, uid: int, state: str = "up", name: str | None = None, **meta: object) -> Ledger:
    led = Ledger.create({"backend": "netns", "topology": "three_vnf", "nodes": {"sender": {}, "vnf1": {}}, **meta},
                        root=root)
    changes: dict[str, object] = {"uid": uid, "user": f"user{uid}", "state": state}
    if name:
        changes["name"] = name
    if state == "dead":
        changes["owner"] = {"pid": 2 ** 22 + 1, "start": 1}
    led.update_meta(**changes)
    return led


# ----------------------------------------------------------------------------------------------- --json


def test_show_json_shape(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["show", "fork", "--json"], capsys)
    assert code == 0
    data = json.loads(out)
    assert data["schema"] == "tunlab.show/1" and data["name"] == "fork"
    assert {"overlay", "mtu", "datapath", "nodes", "links", "paths", "routes", "source"} <= set(data)
    nodes = {n["name"]: n for n in data["nodes"]}
    assert nodes["sender"]["role"] == "endpoint" and nodes["classifier"]["kind"] == "kernel"
    link = data["links"][0]
    assert set(link) >= {"name", "transport", "a", "b"} and set(link["a"]) == {"node", "addr", "port"}
    assert ["sender", "classifier", "fw_a", "rx_a"] in [p["nodes"] for p in data["paths"]]
    assert {"prefix": "172.16.1.0/24", "next_hop": "fw_a"} in data["routes"]["classifier"]


def test_ls_json_shape_with_user_and_name(runs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["ls", "--json"], capsys)
    assert code == 0 and json.loads(out) == {"schema": "tunlab.ls/1", "runs": []}
    mine = make_run(runs, uid=ME, name="mylab")
    make_run(runs, uid=OTHER, state="dead")
    code, out, _ = run(["ls", "--json"], capsys)
    data = json.loads(out)["runs"]
    assert [r["state"] for r in data] == ["up", "dead"] or [r["state"] for r in data] == ["dead", "up"]
    row = next(r for r in data if r["run"] == mine.run_id)
    assert row["name"] == "mylab" and row["user"] == f"user{ME}" and row["uid"] == ME
    assert row["topology"] == "three_vnf" and row["nodes"] == ["sender", "vnf1"] and row["backend"] == "netns"
    assert set(row) >= {"run", "name", "state", "backend", "topology", "nodes", "created", "age_s", "user",
                        "owner_pid", "dir"}
    code, out, _ = run(["ls", "--json", "--mine"], capsys)
    assert [r["run"] for r in json.loads(out)["runs"]] == [mine.run_id]


def test_ls_table_shows_user_and_name(runs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    led = make_run(runs, uid=OTHER, name="theirs")
    code, out, _ = run(["ls"], capsys)
    row = next(line for line in out.splitlines() if led.run_id in line)
    assert code == 0 and f"user{OTHER}" in row and "theirs" in row and "user" in out


def test_new_runs_record_the_person_behind_sudo(runs: Path) -> None:
    led = Ledger.create({"topology": "x"}, root=runs)
    assert led.meta()["uid"] == ME


def test_run_json_shape() -> None:
    from tunlab.cli.jsonout import results_json
    from tunlab.verdict.checks import CheckResult, ScenarioResult

    r = ScenarioResult("nolab", source="s.py", topology="three_vnf", error="boom", seed=9)
    r.links.append(CheckResult("link l1", False, "bare packet", hop="l1"))
    data = results_json([r], 9, 1)
    assert data["schema"] == "tunlab.run/1" and data["seed"] == 9 and data["passed"] is False
    assert data["exit_code"] == 1
    sc = data["scenarios"][0]
    assert sc["seed"] == 9 and sc["error"] == "boom" and sc["failed"][0]["name"] == "link l1"
    assert set(sc) >= {"name", "source", "topology", "passed", "error", "run_id", "duration_s", "results_dir",
                       "chains", "probes", "checks", "failed", "notes"}
    json.dumps(data)


# ----------------------------------------------------------------------------------------------- exit codes


@pytest.mark.parametrize(("args", "code"), [
    (["show", "nope"], ExitCode.USAGE),            # a description error
    (["show", "--bogus"], ExitCode.USAGE),         # a usage error (click)
    (["run", "no_such_scenario"], ExitCode.CANNOT_RUN),  # as non-root: cannot run here comes first
])
def test_exit_codes(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], args: list[str],
                    code: int) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    got, _, err = run(args, capsys)
    assert got == code, err


def test_not_root_is_not_a_failed_check(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    code, _, err = run(["up", "three_vnf"], capsys)
    assert code == ExitCode.CANNOT_RUN != ExitCode.CHECKS_FAILED and "needs root" in err


def test_unknown_scenario_name_lists_the_shipped_ones(runs: Path, capsys: pytest.CaptureFixture[str],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from tunlab.system import privileges

    monkeypatch.setattr(privileges, "require_linux_netns", lambda: None)
    code, _, err = run(["run", "nope"], capsys)
    assert code == ExitCode.USAGE and "three_vnf" in err and err.count("\n") == 1


def test_an_unexpected_exception_is_an_internal_error(monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    from tunlab.cli import lab as lab_cli

    def broken(*a: object, **k: object) -> None:
        raise ZeroDivisionError("oops")

    monkeypatch.setattr(lab_cli, "_load", broken)
    code, _, err = run(["show", "three_vnf"], capsys)
    assert code == ExitCode.INTERNAL == 4
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("tunlab: internal error: ZeroDivisionError")


def test_exit_codes_are_documented() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("### Exit codes"):]
    for code in ExitCode:
        assert f"| {int(code)} |" in section, code


# ----------------------------------------------------------------------------------------------- ASCII


def test_ascii_terminal_gets_ascii_not_a_crash() -> None:
    res = tunlab("show", "three_vnf", env={"PYTHONIOENCODING": "ascii", "COLUMNS": "150"})
    assert res.returncode == 0, res.stderr
    assert "sender" in res.stdout and "+--" in res.stdout or "|" in res.stdout
    res.stdout.encode("ascii")


def test_ascii_report_of_a_failed_scenario() -> None:
    """The run report's em-dashes, arrows and rules (what crashed `PYTHONIOENCODING=ascii tunlab run`)."""
    code = ("import sys; sys.path.insert(0, 'tests/unit')\n"
            "from tunlab.cli.console import ascii_safe_streams, make_console\n"
            "from test_report import failing\n"
            "from tunlab.verdict.report import render\n"
            "ascii_safe_streams(); render(failing(), make_console())\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120,
                         env={**os.environ, "PYTHONIOENCODING": "ascii", "COLUMNS": "150"})
    assert res.returncode == 0, res.stderr
    assert "FAIL broken" in res.stdout and " - " in res.stdout and "UnicodeEncodeError" not in res.stderr


def test_without_the_fallback_ascii_crashes() -> None:
    """What the fallback prevents (so the test above can fail)."""
    res = subprocess.run([sys.executable, "-c", "print('\u2014')"], capture_output=True, text=True,
                         env={**os.environ, "PYTHONIOENCODING": "ascii"})
    assert res.returncode != 0 and "UnicodeEncodeError" in res.stderr


# ----------------------------------------------------------------------------------------------- progress


class _FakeLab:
    def __init__(self, led: Ledger) -> None:
        self._ledger = led


def test_bring_up_progress_reads_the_ledger(tmp_path: Path) -> None:
    from tunlab.cli.progress import BringUpProgress

    led = Ledger.create({"topology": "big"}, root=tmp_path)
    stream = io.StringIO()
    progress = BringUpProgress(_FakeLab(led), 100, stream=stream, after=0.0, every=0.05)
    with progress:
        led.append(*({"op": "netns", "name": f"ns{i}"} for i in range(100)))
        _wait(lambda: "nodes 100/100, relays 0/100" in stream.getvalue())
        led.append(*({"op": "proc", "role": "relay", "pid": i} for i in range(40)))
        _wait(lambda: "relays 40/100" in stream.getvalue())
    assert f"tunlab up: {led.run_id}: namespaces" in stream.getvalue()


def test_a_quick_bring_up_prints_no_progress(tmp_path: Path) -> None:
    from tunlab.cli.progress import BringUpProgress

    stream = io.StringIO()
    with BringUpProgress(_FakeLab(Ledger.create({}, root=tmp_path)), 3, stream=stream, after=30):
        pass
    assert stream.getvalue() == ""


def _wait(cond: object, timeout: float = 20.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
        assert time.monotonic() < deadline, "progress line did not come"
        time.sleep(0.01)


# ----------------------------------------------------------------------------------------------- clean -n, owners


def test_clean_dry_run_lists_what_it_would_remove(runs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    led = make_run(runs, uid=ME, state="dead")
    led.append({"op": "netns", "name": f"tl-{led.run_id}-sender"}, {"op": "proc", "role": "relay", "node": "sender",
                                                                   "pid": 2 ** 22 + 5, "start": 1})
    code, out, _ = run(["clean", "-n"], capsys)
    assert code == 0
    assert f"run {led.run_id}" in out and "would remove 2 recorded object(s)" in out
    assert f"netns (1): tl-{led.run_id}-sender" in out and "proc (1): 4194309 (relay sender)" in out
    assert led.dir.is_dir()  # nothing removed


def test_clean_dry_run_says_when_there_is_nothing(runs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["clean", "-n"], capsys)
    assert code == 0 and "nothing to clean" in out


def test_bare_clean_leaves_other_users_dead_runs(runs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    theirs = make_run(runs, uid=OTHER, state="dead")
    code, out, _ = run(["clean"], capsys)
    assert code == 0 and "1 dead run(s) of other users left alone" in out and theirs.dir.is_dir()
    code, out, _ = run(["clean", "-n", "--all-users"], capsys)
    assert f"run {theirs.run_id}" in out


def test_bare_down_and_exec_ignore_other_users_labs(runs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    theirs = make_run(runs, uid=OTHER)
    for args in (["down"], ["exec", "sender", "--", "true"]):
        code, _, err = run(args, capsys)
        assert code == ExitCode.USAGE and "you have no lab" in err and "1 lab(s) of other users left alone" in err
    assert theirs.dir.is_dir()
    mine = make_run(runs, uid=ME)
    code, out, err = run(["down"], capsys)  # picks mine (nothing recorded, so nothing to remove but its folder)
    assert code == 0, err
    assert f"run {mine.run_id}: removed 0" in out and not mine.dir.exists() and theirs.dir.is_dir()


def test_runs_are_found_by_name(runs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_run(runs, uid=OTHER, name="shared-lab")
    code, _, err = run(["exec", "--run", "shared-lab", "nobody"], capsys)
    assert code == ExitCode.USAGE and "has no node 'nobody'" in err  # found by name (explicitly: allowed)
    code, _, err = run(["down", "no-such-name"], capsys)
    assert code == ExitCode.USAGE and "there is no run 'no-such-name'" in err


def test_up_name_must_be_unique_and_well_formed(runs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_run(runs, uid=OTHER, name="taken")
    code, _, err = run(["up", "three_vnf", "--name", "taken"], capsys)
    assert code == ExitCode.USAGE and "already has that name" in err
    code, _, err = run(["up", "three_vnf", "--name", "no spaces"], capsys)
    assert code == ExitCode.USAGE and "--name" in err
