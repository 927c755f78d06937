"""What a test run left behind: named namespaces, root-namespace links and tunlab processes.

``snapshot()`` records the named network namespaces (``ip netns list``), the links of the root namespace
(``ip -o link``) and the processes whose environment carries ``TUNLAB_RUN`` (read from
``/proc/PID/environ``). ``leaks(before, after)`` names what appeared in between. Nothing is ever removed or
signalled here: the check only reports. Stdlib only, no root needed (as a normal user, other users'
processes cannot be read and are not seen).

On a shared machine other people's labs come and go during a run. Given ``runs`` (the ids this suite's runs
wrote to ``$TUNLAB_RUN_LOG``: tunlab run ids and test prefixes), ``leaks`` judges only what is this suite's:
names carrying one of those ids (as a whole token, or as the name's prefix) and processes started under this
suite (``TUNLAB_SUITE``) or tagged with one of those ids; anything else is someone else's and not reported.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

RUN_VAR = "TUNLAB_RUN"
SUITE_VAR = "TUNLAB_SUITE"
RUN_LOG_VAR = "TUNLAB_RUN_LOG"  # a file every tunlab run (and test NetLab) started under it appends its id to


@dataclass(frozen=True)
class Proc:
    pid: int
    start: int  # /proc/PID/stat field 22: tells a reused pid from the original process
    run: str
    suite: str | None
    cmd: str


@dataclass(frozen=True)
class Snapshot:
    netns: frozenset[str] = frozenset()
    links: frozenset[str] = frozenset()
    procs: frozenset[Proc] = field(default_factory=frozenset)


def parse_netns_list(text: str) -> set[str]:
    """Names from ``ip netns list`` output ("name" or "name (id: N)" per line)."""
    return {line.split()[0] for line in text.splitlines() if line.strip()}


def parse_link_list(text: str) -> set[str]:
    """Interface names from ``ip -o link`` output ("N: name[@peer]: <FLAGS> ...")."""
    names = set()
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3 and parts[0].strip().isdigit():
            names.add(parts[1].strip().split("@", 1)[0])
    return names


def _ip(*args: str) -> str:
    return subprocess.run(["ip", *args], check=True, capture_output=True, text=True).stdout


def _start_time(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (field 2) may hold spaces and parentheses: fields start after the last ')'
    return int(stat.rsplit(")", 1)[1].split()[19])


def tunlab_processes(proc: Path = Path("/proc")) -> set[Proc]:
    """Processes whose environment has TUNLAB_RUN (those this user may read)."""
    found = set()
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            env = (entry / "environ").read_bytes().split(b"\0")
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").strip()
        except OSError:  # gone, or not ours to read
            continue
        values = dict(v.split(b"=", 1) for v in env if b"=" in v)
        run = values.get(RUN_VAR.encode())
        if run is None:
            continue
        start = _start_time(int(entry.name))
        if start is None:
            continue
        suite = values.get(SUITE_VAR.encode())
        found.add(Proc(int(entry.name), start, run.decode(errors="replace"),
                       suite.decode(errors="replace") if suite is not None else None,
                       cmd.decode(errors="replace")[:160]))
    return found


def snapshot() -> Snapshot:
    return Snapshot(frozenset(parse_netns_list(_ip("netns", "list"))),
                    frozenset(parse_link_list(_ip("-o", "link"))),
                    frozenset(tunlab_processes()))


def read_run_log(path: str | os.PathLike[str]) -> set[str]:
    """The ids in a run log (one per line; missing file: none)."""
    try:
        return {line.strip() for line in Path(path).read_text().splitlines() if line.strip()}
    except OSError:
        return set()


def _owned(name: str, runs: set[str]) -> bool:
    return any(name.startswith(r) or re.search(rf"(?<![A-Za-z0-9]){re.escape(r)}(?![A-Za-z0-9])", name)
               for r in runs)


def leaks(before: Snapshot, after: Snapshot, suite: str | None = None, runs: set[str] | None = None) -> list[str]:
    """One line per namespace, link or tunlab process present in ``after`` and not in ``before`` (only this
    suite's, when ``runs`` is given: see the module docstring)."""
    netns = sorted(after.netns - before.netns)
    links = sorted(after.links - before.links)
    procs = sorted(after.procs - before.procs, key=lambda p: p.pid)
    if runs is not None:
        netns = [n for n in netns if _owned(n, runs)]
        links = [n for n in links if _owned(n, runs)]
        procs = [p for p in procs if (suite is not None and p.suite == suite) or p.run in runs]
    lines = [f"netns   {n}   (look: ip netns pids {n}; tunlab clean removes what tunlab recorded)" for n in netns]
    lines += [f"link    {n}   (in the root namespace; look: ip -d link show {n})" for n in links]
    for p in procs:
        origin = "" if suite is None else ("  [this suite]" if p.suite == suite else "  [not started by this suite?]")
        lines.append(f"process {p.pid}   {RUN_VAR}={p.run}   {p.cmd}{origin}")
    return lines


def settled_leaks(before: Snapshot, suite: str | None = None, deadline_s: float = 5.0,
                  take: Callable[[], Snapshot] = snapshot,
                  runs: Callable[[], set[str] | None] = lambda: None) -> list[str]:
    """``leaks`` after giving asynchronous teardown up to ``deadline_s`` to finish (polls, no fixed sleep)."""
    end = time.monotonic() + deadline_s
    while True:
        found = leaks(before, take(), suite, runs())
        if not found or time.monotonic() >= end:
            return found
        time.sleep(0.1)


if __name__ == "__main__":  # print the current snapshot, for a look by hand
    s = snapshot()
    print(f"netns: {sorted(s.netns)}\nlinks: {sorted(s.links)}")
    for p in sorted(s.procs, key=lambda p: p.pid):
        print(f"process {p.pid} {RUN_VAR}={p.run} {p.cmd}")
