"""The run directory and its ownership ledger.

``/run/tunlab/<run_id>/`` (``$TUNLAB_RUN_ROOT`` overrides the root) holds:

- ``meta.json``: owner pid and start time, the user behind it (uid, user), state, backend, topology, nodes,
  and the name given with ``tunlab up --name`` (rewritten atomically);
- ``ledger.jsonl``: one JSON object per created thing, appended and fsync'd *before* it is created:
  ``{"op": "netns", "name": ...}``, ``{"op": "link", "netns": ..., "ifname": ...}``,
  ``{"op": "proc", "node": ..., "pid": ..., "start": ...}``, ``{"op": "file", "path": ...}``...;
- relay logs, control sockets and counters.

:func:`replay` undoes the entries in reverse order, whatever happened, with removers a backend supplies;
consecutive entries of one kind go to their remover together (so 100 relays are stopped at once).
A run is *dead* when its owner process is gone (pid absent or started at another time) and it was not
handed over to ``tunlab up``; ``tunlab clean`` replays dead runs only.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunlab.errors import TunlabError
from tunlab.model.names import is_run_id, new_run_id
from tunlab.system.privileges import caller_uid, user_name
from tunlab.system.procs import proc_start_time, process_alive

Entry = dict[str, Any]
Remover = Callable[[Sequence[Entry]], None]

DEFAULT_ROOT = "/run/tunlab"
ENV_TAG = "TUNLAB_RUN"
#: a group (name or number) that may read run directories and relay control sockets; root only without it
ENV_GROUP = "TUNLAB_GROUP"


def run_root() -> Path:
    return Path(os.environ.get("TUNLAB_RUN_ROOT") or DEFAULT_ROOT)


def run_group() -> int | None:
    """The gid of $TUNLAB_GROUP, or None (run directories and control sockets are then root-only)."""
    value = (os.environ.get(ENV_GROUP) or "").strip()
    if not value:
        return None
    if value.isdigit():
        return int(value)
    import grp

    try:
        return grp.getgrnam(value).gr_gid
    except KeyError:
        raise TunlabError(f"${ENV_GROUP}={value}: there is no such group", "give a group name or number") from None


def _secure_root(root: Path) -> None:
    """The runs' root folder: made 0755, and refused when it is a link or not root's (as root)."""
    root.mkdir(mode=0o755, parents=True, exist_ok=True)
    st = os.lstat(root)
    if os.path.islink(root) or (os.geteuid() == 0 and st.st_uid != 0):
        raise TunlabError(f"{root} is a symbolic link or does not belong to root: tunlab does not use it",
                          "remove it, or set TUNLAB_RUN_ROOT to a folder of root's")


# ------------------------------------------------------------------------------------------ processes


def tagged_pids(run_id: str) -> list[int]:
    """Processes whose environment holds exactly TUNLAB_RUN=<run_id> (relays and node.popen children)."""
    tag = f"{ENV_TAG}={run_id}".encode()
    me = os.getpid()
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) == me:
            continue
        try:
            with open(f"/proc/{d}/environ", "rb") as f:
                env = f.read()
        except OSError:
            continue
        if tag in env.split(b"\0"):
            out.append(int(d))
    return out


def stop_processes(targets: Iterable[tuple[int, int | None]], timeout: float = 3.0) -> list[int]:
    """SIGTERM every (pid, start) still alive, wait for all together, SIGKILL what is left.

    A pid whose start time differs is someone else's process and is never signalled. Returns the pids
    that had to be killed."""
    live = [(pid, start) for pid, start in targets if process_alive(pid, start)]
    for pid, _ in live:
        _signal(pid, signal.SIGTERM)
    left = _wait_gone(live, timeout)
    for pid, _ in left:
        _signal(pid, signal.SIGKILL)
    _wait_gone(left, timeout)
    return [pid for pid, _ in left]


def _wait_gone(procs: list[tuple[int, int | None]], timeout: float) -> list[tuple[int, int | None]]:
    """Poll until every process has exited (reaping our own children); return those still alive."""
    deadline = time.monotonic() + timeout
    while procs:
        procs = [(pid, st) for pid, st in procs if not _reaped(pid) and process_alive(pid, st)]
        if not procs or time.monotonic() > deadline:
            break
        time.sleep(0.002)
    return procs


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _reaped(pid: int) -> bool:
    """Reap ``pid`` if it is our exited child; True when it is gone."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == pid
    except ChildProcessError:
        return False


# ------------------------------------------------------------------------------------------- ledger


@dataclass
class Ledger:
    dir: Path

    @property
    def run_id(self) -> str:
        return self.dir.name

    @property
    def ledger_path(self) -> Path:
        return self.dir / "ledger.jsonl"

    @property
    def meta_path(self) -> Path:
        return self.dir / "meta.json"

    # -- creation and opening
    @classmethod
    def create(cls, meta: Mapping[str, Any], root: Path | None = None, run_id: str | None = None) -> Ledger:
        """Reserve a fresh run id (its directory) and write meta.json with this process as owner."""
        root = root or run_root()
        _secure_root(root)
        gid = run_group()
        for _ in range(100):
            rid = run_id or new_run_id()
            if _netns_leftovers(rid):
                if run_id:
                    raise TunlabError(f"run id {rid} still has namespaces in /run/netns")
                continue
            try:
                (root / rid).mkdir(mode=0o700)
            except FileExistsError:
                if run_id:
                    raise TunlabError(f"run {rid} already exists in {root}") from None
                continue
            # root-only whatever the umask (logs, counters, control sockets), or readable by $TUNLAB_GROUP
            if gid is not None:
                os.chown(root / rid, -1, gid)
            os.chmod(root / rid, 0o750 if gid is not None else 0o700)
            led = cls(root / rid)
            pid = os.getpid()
            uid = caller_uid()  # the person (sudo user), so bare `tunlab down/exec/clean` act on their runs only
            led.write_meta({"uid": uid, "user": user_name(uid), **meta, "run_id": rid, "state": "starting",
                            "created": time.time(), "owner": {"pid": pid, "start": proc_start_time(pid)}})
            os.close(os.open(led.ledger_path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o640))
            log_run(rid)
            return led
        raise TunlabError(f"could not find a free run id in {root}")

    @classmethod
    def open(cls, run_id: str, root: Path | None = None) -> Ledger:
        root = root or run_root()
        if not is_run_id(run_id) or not (root / run_id).is_dir():
            raise TunlabError(f"there is no run '{run_id}' in {root}", "see `tunlab ls`")
        return cls(root / run_id)

    # -- entries
    def append(self, *entries: Entry) -> None:
        """Record ``entries`` durably; call it before creating what they describe."""
        if not entries:
            return
        data = "".join(json.dumps(e, separators=(",", ":")) + "\n" for e in entries).encode()
        fd = os.open(self.ledger_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o640)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)

    def entries(self) -> list[Entry]:
        """Recorded entries in order; a torn last line (crash while writing) is ignored."""
        try:
            text = self.ledger_path.read_text()
        except FileNotFoundError:
            return []
        out = []
        for line in text.splitlines():
            try:
                e = json.loads(line)
            except ValueError:
                continue
            if isinstance(e, dict) and isinstance(e.get("op"), str):
                out.append(e)
        return out

    # -- meta
    def meta(self) -> dict[str, Any]:
        try:
            m = json.loads(self.meta_path.read_text())
            return m if isinstance(m, dict) else {}
        except (OSError, ValueError):
            return {}

    def write_meta(self, meta: Mapping[str, Any]) -> None:
        tmp = self.meta_path.with_suffix(f".{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o640)
        with open(fd, "w") as f:
            f.write(json.dumps(meta, indent=1, sort_keys=True))
        os.replace(tmp, self.meta_path)

    def update_meta(self, **changes: Any) -> dict[str, Any]:
        m = {**self.meta(), **changes}
        self.write_meta(m)
        return m

    def state(self) -> str:
        """``up`` (handed to `tunlab up`), ``running`` (owner alive) or ``dead``."""
        m = self.meta()
        if m.get("state") == "up":
            return "up"
        owner = m.get("owner") or {}
        pid = owner.get("pid")
        if isinstance(pid, int) and process_alive(pid, owner.get("start")):
            return "running"
        return "dead"

    def remove_dir(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


RUN_LOG_ENV = "TUNLAB_RUN_LOG"


def log_run(run_id: str) -> None:
    """Append ``run_id`` to the file ``$TUNLAB_RUN_LOG`` names, if any: a test suite (scripts/suite.py) learns
    which runs are its own, so its leak check never blames another user's lab on a shared machine."""
    path = os.environ.get(RUN_LOG_ENV)
    if not path:
        return
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, f"{run_id}\n".encode())
        finally:
            os.close(fd)
    except OSError:
        pass  # best effort: the leak check then reports this run's leftovers as someone else's


def _netns_leftovers(run_id: str) -> bool:
    try:
        return any(n.startswith(f"tl-{run_id}-") for n in os.listdir("/run/netns"))
    except OSError:
        return False


def list_runs(root: Path | None = None) -> list[Ledger]:
    root = root or run_root()
    try:
        names = sorted(os.listdir(root))
    except OSError:
        return []
    return [Ledger(root / n) for n in names if is_run_id(n) and (root / n).is_dir()]


def open_run(ref: str, root: Path | None = None) -> Ledger:
    """A run by id or by the name given with `tunlab up --name` (a name may look like a run id, e.g. "mine":
    an existing run directory wins, then a lab of that name, the live one before dead ones)."""
    root = root or run_root()
    if is_run_id(ref) and (root / ref).is_dir():
        return Ledger(root / ref)
    named = [r for r in list_runs(root) if r.meta().get("name") == ref]
    live = [r for r in named if r.state() != "dead"] or named
    if not live:
        raise TunlabError(f"there is no run '{ref}' (neither a run id nor a lab name)", "see `tunlab ls`")
    return live[-1]


# ------------------------------------------------------------------------------------------- replay


def replay(ledger: Ledger, removers: Mapping[str, Remover]) -> list[str]:
    """Undo the ledger's entries in reverse order; return one line per failure (it carries on)."""
    errors: list[str] = []
    groups: list[list[Entry]] = []
    for e in reversed(ledger.entries()):
        if groups and groups[-1][0]["op"] == e["op"]:
            groups[-1].append(e)
        else:
            groups.append([e])
    for group in groups:
        op = group[0]["op"]
        remover = removers.get(op)
        if remover is None:
            errors.append(f"run {ledger.run_id}: no remover for '{op}' entries ({len(group)} left)")
            continue
        try:
            remover(group)
        except Exception as exc:  # keep going: the rest must still be removed
            errors.append(f"run {ledger.run_id}: removing {op} {_label(group[0])}...: {exc}")
    return errors


def _label(e: Entry) -> str:
    return str(e.get("name") or e.get("ifname") or e.get("pid") or e.get("path") or "")


def stop_run_processes(run_id: str, netns_files: Iterable[str] = (),
                       recorded: Iterable[tuple[int, int | None]] = ()) -> list[str]:
    """Stop every process of a run at once: the ``recorded`` ones (pid + start time), every process tagged
    ``TUNLAB_RUN=<run_id>`` and every process inside one of the run's namespaces (``netns_files``), however
    it was started (`tunlab exec`, `ip netns exec`, a daemon a command left behind). Returns one line per
    process still alive afterwards."""
    from tunlab.system.procs import netns_id, pids_in_netns

    ids = {i for i in (netns_id(f) for f in netns_files) if i is not None}
    targets = dict(recorded)
    stop_processes(targets.items())  # first the recorded ones, as the ledger orders them
    others = {pid: proc_start_time(pid) for pid in [*tagged_pids(run_id), *pids_in_netns(ids)]
              if pid not in targets}
    stop_processes(others.items())
    targets.update(others)
    return [f"process {pid} ({_comm(pid)}) survived SIGKILL" for pid, st in targets.items()
            if process_alive(pid, st)]


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return "?"


def remove_processes(run_id: str, netns_files: Callable[[], Iterable[str]] | None = None) -> Remover:
    """Remover for ``proc`` entries: stop them all (by pid + start time), together with any process tagged
    with this run (started but killed before it was recorded, or started by `tunlab exec`) and any process
    inside the run's namespaces (``netns_files()``, read before anything is stopped)."""

    def remover(entries: Sequence[Entry]) -> None:
        files = list(netns_files()) if netns_files is not None else []
        targets = [(int(e["pid"]), e.get("start")) for e in entries if isinstance(e.get("pid"), int)]
        left = stop_run_processes(run_id, files, targets)
        if left:
            raise TunlabError("; ".join(left))

    return remover


def remove_files(entries: Sequence[Entry]) -> None:
    for e in entries:
        p = Path(str(e.get("path", "")))
        if not p.is_absolute():
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
