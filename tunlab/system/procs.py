"""Process identity: a pid names a process only together with its start time.

A pid recorded in a ledger may be reused by the kernel for someone else's process after ours exited, so
every recorded process carries its start time (field 22 of ``/proc/PID/stat``) and nothing is signalled
unless both still match.
"""

from __future__ import annotations


def proc_start_time(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat (start time in clock ticks since boot), None if there is no such pid."""
    stat = _proc_stat(pid)
    return int(stat[19]) if stat else None


def _proc_stat(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read().decode(errors="replace")
    except (FileNotFoundError, ProcessLookupError):
        return None
    return raw[raw.rindex(")") + 2:].split()  # fields from 3 (state) on: the comm may hold spaces


def process_alive(pid: int, start: int | None) -> bool:
    """Is ``pid`` still the process that started at ``start`` and not a zombie?"""
    stat = _proc_stat(pid)
    if stat is None or stat[0] in ("Z", "X"):
        return False
    return start is None or int(stat[19]) == start


def netns_id(path: str) -> tuple[int, int] | None:
    """The identity (device, inode) of the network namespace at ``path`` (``/run/netns/NAME``,
    ``/proc/PID/ns/net``); None when there is none."""
    import os

    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def pids_in_netns(ids: set[tuple[int, int]]) -> list[int]:
    """Every process whose network namespace is one of ``ids`` (never this process, never a process of
    the root namespace or of this process's namespace, whatever ``ids`` holds)."""
    import os

    ids = set(ids) - {netns_id("/proc/1/ns/net"), netns_id("/proc/self/ns/net")}
    if not ids:
        return []
    me = os.getpid()
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) == me:
            continue
        if netns_id(f"/proc/{d}/ns/net") in ids:
            out.append(int(d))
    return out


def set_cmdline(argv: list[str]) -> bool:
    """Show ``argv`` as this process's command line (``ps``, ``/proc/PID/cmdline``), as far as the memory
    of the original one reaches (the rest is cut). A process forked from a server (the relays) would
    otherwise show the server's command line. Returns False when it could not."""
    import ctypes

    try:
        with open("/proc/self/stat", "rb") as f:
            fields = f.read().decode(errors="replace").rsplit(")", 1)[1].split()
        start, end = int(fields[45]), int(fields[46])  # arg_start, arg_end (fields 48 and 49)
    except (OSError, IndexError, ValueError):
        return False
    size = end - start
    if size <= 1:
        return False
    data = b"\0".join(a.encode(errors="replace") for a in argv)[: size - 1]
    ctypes.memmove(start, data + b"\0" * (size - len(data)), size)
    return True
