"""Processes inside Mininet hosts: start them by pid, wait for a relay's readiness line, stop them.

Mininet hosts are unnamed namespaces held by a shell; ``/proc/PID/ns/net`` is their only handle.
``mnexec -a PID`` (Mininet's helper) enters that pid's network and mount namespaces and then execs the
command, so the Popen pid *is* the command's pid (what the ledger records). Does not import mininet.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import time
from collections.abc import Mapping, Sequence
from typing import Any

from tunlab.errors import TunlabError


def mnexec_path() -> str:
    found = shutil.which("mnexec")
    if found is None:
        from tunlab.lab.backends.mininet.support import INSTALL_HINT, MininetMissing

        raise MininetMissing("Mininet's 'mnexec' helper is not on PATH", INSTALL_HINT)
    return found


def netns_file(pid: int) -> str:
    return f"/proc/{pid}/ns/net"


def popen_in_pid(pid: int, argv: Sequence[str], **kw: Any) -> subprocess.Popen[Any]:
    """``subprocess.Popen(argv, **kw)`` inside the network (and mount) namespace of process ``pid``."""
    if not argv:
        raise TunlabError("popen: empty command")
    if not os.path.exists(netns_file(pid)):
        raise TunlabError(f"Mininet host process {pid} is gone", "is the network still up?")
    return subprocess.Popen([mnexec_path(), "-a", str(pid), *map(str, argv)], **kw)


def tagged_env(run_id: str, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a process a run starts: ours plus ``TUNLAB_RUN=<run_id>``."""
    env = dict(os.environ)
    env["TUNLAB_RUN"] = run_id
    if extra:
        env.update(extra)
    return env


def read_ready_line(fd: int, proc: subprocess.Popen[Any], *, timeout: float, what: str,
                    log_file: str | None = None) -> dict[str, Any]:
    """Read the relay's one-line readiness JSON from ``fd`` (closed afterwards) within ``timeout``."""
    deadline = time.monotonic() + timeout
    buf = b""
    try:
        while b"\n" not in buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TunlabError(f"{what}: not ready after {timeout:.0f} s", _log_hint(log_file))
            ready, _, _ = select.select([fd], [], [], min(left, 0.5))
            if not ready:
                continue
            chunk = os.read(fd, 4096)
            if not chunk:  # writer closed without a line: the process failed
                break
            buf += chunk
    finally:
        os.close(fd)
    line = buf.split(b"\n", 1)[0].strip()
    if not line:
        code = proc.poll()
        state = f"exited with status {code}" if code is not None else "closed its readiness pipe"
        raise TunlabError(f"{what}: {state} before it was ready", _log_hint(log_file))
    try:
        info = json.loads(line)
    except ValueError:
        raise TunlabError(f"{what}: unreadable readiness line {line[:120]!r}") from None
    if not isinstance(info, dict) or not info.get("ready"):
        error = info.get("error") if isinstance(info, dict) else None
        raise TunlabError(f"{what}: {error or 'reported it is not ready'}", _log_hint(log_file))
    return info


def _log_hint(log_file: str | None) -> str | None:
    if not log_file:
        return None
    try:
        with open(log_file, encoding="utf-8", errors="replace") as fh:
            tail = [ln.strip() for ln in fh.read().splitlines() if ln.strip()][-1:]
    except OSError:
        tail = []
    return f"log {log_file}" + (f": {tail[0][-200:]}" if tail else "")


def stop_process(proc: subprocess.Popen[Any], timeout: float = 3.0) -> int | None:
    """SIGTERM, wait, SIGKILL if needed; return the exit status (None if it would not die)."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                return None
    return proc.returncode
