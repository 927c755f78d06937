"""Run tunlab's test suite tier by tier and say plainly whether it passed.

    python scripts/suite.py [--tier unit|netns|mininet|vm]... [--root DIR] [--tier-timeout S]
                            [--no-leak-check] [PYTEST ARGS...]

Tiers are chosen by marker, so a test belongs to exactly one wherever its file lives:
unit = not netns and not mininet, netns = netns and not mininet, mininet = mininet.
The vm tier runs vagrant/vm.sh --ci: it builds (or reuses) the Vagrant box, boots the VM, runs the demo
command and the netns tier's chain, scenario and plugin tests inside it, and tears it down; its counts
are those of the tests inside (pytest arguments do not reach it). Where no VM can start (no QEMU,
libvirt or Vagrant) it says so in one line and is skipped, or fails when TUNLAB_VM_TIER=required
(.ci/run sets it); TUNLAB_VM_TIER=off leaves it out. Its time limit is TUNLAB_VM_TIMEOUT (s, default
2400).
A tier fails when pytest fails, when it collects no test (pytest's exit 5), when it runs as root and
every test of a root tier was skipped, when it runs past --tier-timeout, or when it leaves a named
namespace, a root-namespace link or a TUNLAB_RUN process of its own runs behind (the runs it started write
their ids to $TUNLAB_RUN_LOG, so other users' labs on a shared machine are not judged; reported, never
removed; off with --no-leak-check).
Every tier runs even after one failed. Exit status 0 only when every tier passed.
Environment: TUNLAB_TIER_TIMEOUT (s, default 900), TUNLAB_LEAK_SETTLE (s given to teardown to finish
before leftovers are reported, default 5), TUNLAB_VM_TIER (auto, required or off), TUNLAB_VM_TIMEOUT.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import leakcheck  # noqa: E402

TIERS: dict[str, str] = {
    "unit": "not netns and not mininet",
    "netns": "netns and not mininet",
    "mininet": "mininet",
}
ROOT_TIERS = {"netns", "mininet"}
VM_TIER = "vm"  # not pytest: vagrant/vm.sh --ci, in the Vagrant VM
VM_MODES = ("auto", "required", "off")
VM_CANNOT_START = 77  # vagrant/vm.sh's exit status when no VM can start on this machine
NO_TESTS = 5  # pytest.ExitCode.NO_TESTS_COLLECTED
DEFAULT_TIMEOUT_S = 900.0  # three tiers stay well inside CI's 90 minutes even when each hangs
DEFAULT_VM_TIMEOUT_S = 2400.0
VM_TEARDOWN_GRACE_S = 300.0  # after the time limit: vm.sh's teardown (vagrant destroy, daemons)


def say(msg: str) -> None:
    print(f"suite: {msg}", flush=True)


@dataclass
class Counts:
    tests: int = 0
    failed: int = 0
    skipped: int = 0

    @property
    def passed(self) -> int:
        return self.tests - self.failed - self.skipped


@dataclass
class TierResult:
    name: str
    exit_code: int | None = None
    counts: Counts = field(default_factory=Counts)
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0
    skipped_why: str | None = None  # a tier that could not run here and did not have to

    @property
    def ok(self) -> bool:
        return not self.problems


def read_junit(path: Path) -> Counts:
    """Totals from a pytest JUnit XML file (zeros when pytest wrote none)."""
    counts = Counts()
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return counts
    for suite in root.iter("testsuite"):
        counts.tests += int(suite.get("tests", 0))
        counts.failed += int(suite.get("failures", 0)) + int(suite.get("errors", 0))
        counts.skipped += int(suite.get("skipped", 0))
    return counts


def judge(name: str, exit_code: int | None, counts: Counts, as_root: bool) -> list[str]:
    """Why a tier failed, from pytest's exit code and counts (empty list: it passed)."""
    marker = TIERS[name]
    if exit_code is None:
        return [f"tier {name} ran past its time limit and was interrupted"]
    if exit_code == NO_TESTS:
        return [f"tier {name} collected no tests (pytest exit 5, -m \"{marker}\"): a tier without tests "
                f"is a failure; add its tests or run other tiers with --tier"]
    if exit_code != 0:
        what = {1: "tests failed", 2: "interrupted", 3: "pytest internal error",
                4: "pytest usage error"}.get(exit_code, "pytest failed")
        return [f"tier {name}: {what} (pytest exit {exit_code})"]
    if as_root and name in ROOT_TIERS and counts.tests > 0 and counts.skipped == counts.tests:
        return [f"tier {name}: all {counts.tests} tests were skipped although this runs as root "
                f"(pytest's skip reasons are above)"]
    return []


def run_pytest(cmd: list[str], cwd: Path, env: dict[str, str], timeout_s: float) -> int | None:
    """Run pytest; on timeout interrupt it (SIGINT lets fixtures tear down) and return None."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=env)
    try:
        return proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        say(f"time limit of {timeout_s:.0f} s reached: interrupting pytest (pid {proc.pid})")
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        return None


def vm_mode() -> str:
    mode = os.environ.get("TUNLAB_VM_TIER", "auto")
    if mode not in VM_MODES:
        raise SystemExit(f"suite: TUNLAB_VM_TIER={mode}: use one of {', '.join(VM_MODES)}")
    return mode


def read_vm_counts(path: Path) -> Counts:
    """"PASSED FAILED SKIPPED" as vagrant/vm.sh --counts writes them (zeros when it wrote none)."""
    try:
        passed, failed, skipped = (int(w) for w in path.read_text().split())
    except (OSError, ValueError):
        return Counts()
    return Counts(passed + failed + skipped, failed, skipped)


def run_vm_script(cmd: list[str], cwd: Path, env: dict[str, str], timeout_s: float) -> int | None:
    """Run vm.sh in a process group of its own; on timeout SIGINT the group (vm.sh tears the VM down)."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        return proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        say(f"time limit of {timeout_s:.0f} s reached: interrupting vagrant/vm.sh (process group {proc.pid})")
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=VM_TEARDOWN_GRACE_S)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        return None


def run_vm_tier(root: Path, suite_id: str, timeout_s: float, workdir: Path, leak_check: bool = True,
                mode: str = "auto") -> TierResult:
    result = TierResult(VM_TIER)
    script = root / "vagrant/vm.sh"
    say(f"---- tier {VM_TIER}: vagrant/vm.sh --ci (TUNLAB_VM_TIER={mode})")
    if not script.is_file():
        why = f"no vagrant/vm.sh in {root}"
        if mode == "required":
            result.problems.append(f"tier {VM_TIER}: {why} (TUNLAB_VM_TIER=required)")
        else:
            result.skipped_why = why
            say(f"tier {VM_TIER} skipped: {why}")
        return result
    counts_file = workdir / "vm.counts"
    env = dict(os.environ, **{leakcheck.SUITE_VAR: suite_id})
    before = leakcheck.snapshot() if leak_check else None
    t0 = time.monotonic()
    result.exit_code = run_vm_script(["bash", str(script), "--ci", "--counts", str(counts_file)], root, env,
                                     timeout_s)
    result.seconds = time.monotonic() - t0
    result.counts = read_vm_counts(counts_file)
    if result.exit_code is None:
        result.problems.append(f"tier {VM_TIER} ran past its time limit ({timeout_s:.0f} s, TUNLAB_VM_TIMEOUT) "
                               f"and was interrupted")
    elif result.exit_code == VM_CANNOT_START:
        if mode == "required":
            result.problems.append(f"tier {VM_TIER}: no VM can start here (the line above says why) and "
                                   f"TUNLAB_VM_TIER=required")
        else:
            result.skipped_why = "no VM can start here (the line above says why)"
    elif result.exit_code != 0:
        result.problems.append(f"tier {VM_TIER}: failed (vagrant/vm.sh exit {result.exit_code}; its steps and "
                               f"times are above)")
    settle_s = float(os.environ.get("TUNLAB_LEAK_SETTLE", 5.0))
    left = leakcheck.settled_leaks(before, suite_id, settle_s) if before is not None else []
    # the VM tier makes no network namespace and no lab process on this host (its labs are inside the guest):
    # a namespace or tunlab process that appeared meanwhile is another user's; its links (libvirt's) and the
    # processes it started itself are judged
    left = [line for line in left if line.split(None, 1)[0] == "link" or line.endswith("[this suite]")]
    if left:
        result.problems.append(f"tier {VM_TIER} left {len(left)} thing(s) behind (not removed):")
        result.problems.extend(f"    {line}" for line in left)
    return result


def run_tier(name: str, root: Path, pytest_args: list[str], suite_id: str, timeout_s: float,
             workdir: Path, leak_check: bool = True) -> TierResult:
    result = TierResult(name)
    junit = workdir / f"{name}.xml"
    cmd = [sys.executable, "-m", "pytest", "-m", TIERS[name], f"--junitxml={junit}", *pytest_args]
    run_log = workdir / f"{name}.runs"  # every run this tier starts writes its id here: the leak check's scope
    env = dict(os.environ, **{leakcheck.SUITE_VAR: suite_id, leakcheck.RUN_LOG_VAR: str(run_log)})
    say(f"---- tier {name}: pytest -m \"{TIERS[name]}\" {' '.join(pytest_args)}".rstrip())
    before = leakcheck.snapshot() if leak_check else None
    t0 = time.monotonic()
    result.exit_code = run_pytest(cmd, root, env, timeout_s)
    result.seconds = time.monotonic() - t0
    result.counts = read_junit(junit)
    result.problems = judge(name, result.exit_code, result.counts, os.geteuid() == 0)
    settle_s = float(os.environ.get("TUNLAB_LEAK_SETTLE", 5.0))
    left = leakcheck.settled_leaks(before, suite_id, settle_s, runs=lambda: leakcheck.read_run_log(run_log)) \
        if before is not None else []
    if left:
        result.problems.append(f"tier {name} left {len(left)} thing(s) behind (not removed; only this suite's "
                               f"own runs are judged, other users' labs are not):")
        result.problems.extend(f"    {line}" for line in left)
    return result


@dataclass
class Options:
    tiers: list[str]
    root: Path
    timeout_s: float
    leak_check: bool
    pytest_args: list[str]
    vm_mode: str = "auto"
    vm_timeout_s: float = DEFAULT_VM_TIMEOUT_S


def parse_args(argv: list[str]) -> Options:
    tiers: list[str] = []
    leak_check = True
    root = Path(__file__).resolve().parent.parent
    timeout_s = float(os.environ.get("TUNLAB_TIER_TIMEOUT", DEFAULT_TIMEOUT_S))
    rest = list(argv)
    while rest and rest[0] in ("--tier", "--root", "--tier-timeout", "--no-leak-check"):
        if rest[0] == "--no-leak-check":
            leak_check, rest = False, rest[1:]
            continue
        if len(rest) < 2:
            raise SystemExit(f"suite: {rest[0]} needs a value")
        opt, value, rest = rest[0], rest[1], rest[2:]
        if opt == "--tier":
            if value not in TIERS and value != VM_TIER:
                raise SystemExit(f"suite: unknown tier '{value}' (tiers: {', '.join([*TIERS, VM_TIER])})")
            tiers.append(value)
        elif opt == "--root":
            root = Path(value).resolve()
        else:
            timeout_s = float(value)
    if rest[:1] == ["--"]:
        rest = rest[1:]
    mode = vm_mode()
    default = list(TIERS) + ([] if mode == "off" else [VM_TIER])
    vm_timeout_s = float(os.environ.get("TUNLAB_VM_TIMEOUT", DEFAULT_VM_TIMEOUT_S))
    return Options(tiers or default, root, timeout_s, leak_check, rest, mode, vm_timeout_s)


def main(argv: list[str]) -> int:
    opts = parse_args(argv)
    suite_id = uuid.uuid4().hex[:12]
    with tempfile.TemporaryDirectory(prefix="tunlab-suite-") as tmp:
        results = [run_vm_tier(opts.root, suite_id, opts.vm_timeout_s, Path(tmp), opts.leak_check, opts.vm_mode)
                   if t == VM_TIER else
                   run_tier(t, opts.root, opts.pytest_args, suite_id, opts.timeout_s, Path(tmp), opts.leak_check)
                   for t in opts.tiers]
    say("---- summary")
    for r in results:
        c = r.counts
        state = ("skip" if r.skipped_why else "ok") if r.ok else "FAILED"
        say(f"{r.name:8} {state:6} {c.passed:4} passed {c.failed:4} failed {c.skipped:4} skipped "
            f"{r.seconds:7.1f} s")
    for r in results:
        if r.skipped_why:
            say(f"tier {r.name} skipped: {r.skipped_why}")
        for line in r.problems:
            say(line)
    failed = [r.name for r in results if not r.ok]
    took = sum(r.seconds for r in results)
    say(f"tiers failed: {', '.join(failed)} ({took:.0f} s)" if failed else f"every tier passed ({took:.0f} s)")
    total = Counts(sum(r.counts.tests for r in results), sum(r.counts.failed for r in results),
                   sum(r.counts.skipped for r in results))
    say(f"{total.passed} passed, {total.failed} failed, {total.skipped} skipped")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
