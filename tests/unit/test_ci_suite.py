"""scripts/suite.py, the tier runner behind scripts/test.sh, driven on small throwaway projects."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
AS_ROOT = os.geteuid() == 0

UNIT_OK = "def test_unit():\n    assert sum([1, 2]) == 3\n"
NETNS_OK = ("import os, pytest\n@pytest.mark.netns\ndef test_ns():\n"
            "    assert os.path.exists('/proc/self/ns/net')\n")
MININET_OK = ("import pytest\n@pytest.mark.netns\n@pytest.mark.mininet\ndef test_mn():\n"
              "    assert 'mininet'.upper() == 'MININET'\n")


def project(tmp_path: Path, **files: str) -> Path:
    """A tiny pytest project: ``name=source`` becomes tests/test_name.py."""
    # without the hypothesis and xdist plugins each inner pytest starts in 0.3 s instead of 1.3 s
    (tmp_path / "pytest.ini").write_text("[pytest]\naddopts = -p no:cacheprovider -p no:hypothesispytest "
                                         "-p no:xdist\n")
    tests = tmp_path / "tests"
    tests.mkdir()
    for name, src in files.items():
        (tests / f"test_{name}.py").write_text(src)
    return tmp_path


def suite(root: Path, *args: str, vm: str = "off") -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, TUNLAB_LEAK_SETTLE="0.5", TUNLAB_VM_TIER=vm)
    return subprocess.run([sys.executable, str(ROOT / "scripts/suite.py"), "--root", str(root), *args],
                          cwd=root, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300)


def closing_line(out: str) -> str:
    return out.strip().splitlines()[-1]


def test_every_tier_passing(tmp_path: Path) -> None:
    r = suite(project(tmp_path, u=UNIT_OK, n=NETNS_OK, m=MININET_OK), "--no-leak-check")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "suite: every tier passed (" in r.stdout
    expected = "suite: 3 passed, 0 failed, 0 skipped" if AS_ROOT else "suite: 1 passed, 0 failed, 2 skipped"
    assert closing_line(r.stdout) == expected


def test_a_tier_without_tests_fails_and_says_so(tmp_path: Path) -> None:
    r = suite(project(tmp_path, u=UNIT_OK, n=NETNS_OK), "--no-leak-check")
    assert r.returncode == 1
    assert 'tier mininet collected no tests (pytest exit 5, -m "mininet")' in r.stdout
    assert "suite: tiers failed: mininet (" in r.stdout


def test_a_failing_tier_fails_the_suite_and_the_others_still_run(tmp_path: Path) -> None:
    bad = "def test_bad():\n    assert sorted([2, 1]) == [2, 1]\n"
    r = suite(project(tmp_path, u=UNIT_OK, b=bad, n=NETNS_OK, m=MININET_OK), "--no-leak-check")
    assert r.returncode == 1
    assert "suite: tier unit: tests failed (pytest exit 1)" in r.stdout
    assert "suite: tiers failed: unit (" in r.stdout
    assert closing_line(r.stdout).startswith("suite: ") and ", 1 failed, " in closing_line(r.stdout)


def test_pytest_arguments_and_tier_choice_pass_through(tmp_path: Path) -> None:
    r = suite(project(tmp_path, u=UNIT_OK), "--tier", "unit", "--no-leak-check", "-q", "-k", "test_unit")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "tier netns" not in r.stdout and closing_line(r.stdout) == "suite: 1 passed, 0 failed, 0 skipped"
    assert suite(tmp_path, "--tier", "nope").returncode != 0


@pytest.mark.skipif(not AS_ROOT, reason="the all-skipped rule applies only to runs as root")
def test_root_tier_that_skips_everything_fails_as_root(tmp_path: Path) -> None:
    skipping = "import pytest\n@pytest.mark.netns\ndef test_ns():\n    pytest.skip('nothing to do')\n"
    r = suite(project(tmp_path, n=skipping), "--tier", "netns", "--no-leak-check")
    assert r.returncode == 1
    assert "tier netns: all 1 tests were skipped although this runs as root" in r.stdout


def test_a_hung_tier_is_interrupted(tmp_path: Path) -> None:
    hang = "import threading\ndef test_hang():\n    threading.Event().wait(120)\n"
    r = suite(project(tmp_path, h=hang), "--tier", "unit", "--tier-timeout", "2", "--no-leak-check")
    assert r.returncode == 1
    assert "tier unit ran past its time limit and was interrupted" in r.stdout


def test_a_left_behind_tunlab_process_is_reported_not_killed(tmp_path: Path) -> None:
    run = f"suite-leak-{uuid.uuid4().hex[:8]}"
    pidfile = tmp_path / "leaked.pid"
    leaky = textwrap.dedent(f"""
        import os, subprocess, sys
        def test_leaks():
            p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"],
                                 env=dict(os.environ, TUNLAB_RUN={run!r}), start_new_session=True)
            open({str(pidfile)!r}, "w").write(str(p.pid))
            assert p.poll() is None
        """)
    r = suite(project(tmp_path, leaky=leaky), "--tier", "unit")
    pid = int(pidfile.read_text())
    try:
        assert r.returncode == 1
        assert "suite: tier unit left" in r.stdout
        assert any(f"process {pid} " in ln and f"TUNLAB_RUN={run}" in ln and "[this suite]" in ln
                   for ln in r.stdout.splitlines()), r.stdout
        assert os.path.exists(f"/proc/{pid}"), "the suite must only report, never kill"
    finally:
        # ours: this test started it; check its environment before signalling the pid
        if f"TUNLAB_RUN={run}".encode() in Path(f"/proc/{pid}/environ").read_bytes():
            os.kill(pid, signal.SIGKILL)


# ---- the vm tier: vagrant/vm.sh --ci, here a stand-in script that behaves like one of its outcomes ----

def vm_project(tmp_path: Path, script: str) -> Path:
    root = project(tmp_path, u=UNIT_OK)
    (root / "vagrant").mkdir()
    (root / "vagrant/vm.sh").write_text(script)
    return root


VM_PASSES = ('[ "$1 $2" = "--ci --counts" ] || exit 9\n'
             'echo "vm: tests inside passed"; echo "5 0 1" > "$3"; exit 0\n')
VM_CANNOT = 'echo "vm: cannot start the VM here: missing qemu-system-x86"; exit 77\n'


def test_vm_tier_counts_the_tests_run_inside_the_vm(tmp_path: Path) -> None:
    r = suite(vm_project(tmp_path, VM_PASSES), "--tier", "unit", "--tier", "vm", "--no-leak-check")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "suite: ---- tier vm: vagrant/vm.sh --ci" in r.stdout and "vm: tests inside passed" in r.stdout
    assert closing_line(r.stdout) == "suite: 6 passed, 0 failed, 1 skipped"


def test_vm_tier_is_a_default_tier_unless_off(tmp_path: Path) -> None:
    root = vm_project(tmp_path, VM_PASSES)
    (root / "tests/test_n.py").write_text(NETNS_OK)
    (root / "tests/test_m.py").write_text(MININET_OK)
    on = suite(root, "--no-leak-check", vm="auto")
    assert "tier vm: vagrant/vm.sh --ci" in on.stdout, on.stdout
    off = suite(root, "--no-leak-check", vm="off")
    assert "tier vm" not in off.stdout and "vm " not in off.stdout.split("---- summary")[1]


def test_vm_tier_that_cannot_start_is_skipped_in_one_line(tmp_path: Path) -> None:
    r = suite(vm_project(tmp_path, VM_CANNOT), "--tier", "vm", "--no-leak-check", vm="auto")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "vm: cannot start the VM here: missing qemu-system-x86" in r.stdout
    assert "suite: tier vm skipped: no VM can start here" in r.stdout
    assert closing_line(r.stdout) == "suite: 0 passed, 0 failed, 0 skipped"


def test_vm_tier_that_cannot_start_fails_when_required(tmp_path: Path) -> None:
    r = suite(vm_project(tmp_path, VM_CANNOT), "--tier", "vm", "--no-leak-check", vm="required")
    assert r.returncode == 1
    assert "suite: tier vm: no VM can start here (the line above says why) and TUNLAB_VM_TIER=required" in r.stdout
    assert "suite: tiers failed: vm (" in r.stdout


def test_vm_tier_failing_inside_fails_the_suite(tmp_path: Path) -> None:
    r = suite(vm_project(tmp_path, 'echo "3 1 0" > "$3"; exit 1\n'), "--tier", "vm", "--no-leak-check")
    assert r.returncode == 1
    assert "suite: tier vm: failed (vagrant/vm.sh exit 1" in r.stdout
    assert closing_line(r.stdout) == "suite: 3 passed, 1 failed, 0 skipped"


def test_vm_tier_past_its_time_limit_is_interrupted_and_tears_down(tmp_path: Path) -> None:
    """The whole process group gets SIGINT (vagrant too), and vm.sh's own teardown still runs."""
    marker = tmp_path / "torn-down"
    # the foreground child stops only if the group got the signal; then bash runs its trap
    script = (f'trap \'echo teardown ran > {marker}; exit 130\' INT\n'
              f'{sys.executable} -c "import time; time.sleep(120)" 2>/dev/null\n')
    env_timeout = dict(os.environ, TUNLAB_VM_TIMEOUT="2")
    r = subprocess.run([sys.executable, str(ROOT / "scripts/suite.py"), "--root", str(vm_project(tmp_path, script)),
                        "--tier", "vm", "--no-leak-check"], env=dict(env_timeout, TUNLAB_VM_TIER="auto"),
                       stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1
    assert "tier vm ran past its time limit (2 s, TUNLAB_VM_TIMEOUT) and was interrupted" in r.stdout
    assert marker.read_text() == "teardown ran\n"


def test_vm_tier_mode_must_be_known(tmp_path: Path) -> None:
    r = suite(project(tmp_path, u=UNIT_OK), "--tier", "unit", vm="sometimes")
    assert r.returncode != 0 and "TUNLAB_VM_TIER=sometimes: use one of auto, required, off" in r.stderr
