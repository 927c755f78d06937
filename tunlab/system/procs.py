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
