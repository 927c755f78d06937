"""A fork server for relays: import the relay once, fork it once per node.

Starting 100 relays as separate ``python -m tunlab relay`` processes costs ~0.1 s of CPU each (the
interpreter and the relay's imports); on 2 cores that was most of a 100-VNF bring-up. The lab starts this
module once per bring-up (``python -m tunlab.lab.relayfork``), sends it one request per relay over a
SOCK_SEQPACKET socket -- the relay's command-line arguments (the contract's flags, unchanged), the node's
namespace file and, as SCM_RIGHTS, the ``--ready-fd`` pipe and the output file -- and gets the child's pid
back. The child enters the namespace, starts a new session and runs ``tunlab relay ARGS`` in-process (the
same click command as the ``tunlab relay`` executable). Once the lab has closed its socket the server stays
as the relays' parent, reaping them, and exits when the last one has; SIGTERM (teardown, ``tunlab clean``)
makes it stop its relays first. It is recorded in the run's ledger like the relays.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import socket
import sys
from typing import Any

from tunlab.system.procs import proc_start_time, set_cmdline

REQUEST_MAX = 1 << 20
CMDLINE_ROOM = 4096


def _child(req: dict[str, Any], ready_fd: int, out_fd: int, sock: socket.socket) -> int:
    sock.close()
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    os.setsid()
    from tunlab.system.netns import setns

    ns = os.open(req["netns_file"], os.O_RDONLY)
    setns(ns)
    os.close(ns)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(out_fd, 1)
    os.dup2(out_fd, 2)
    os.close(devnull)
    os.close(out_fd)
    os.environ.update(req.get("env", {}))
    try:
        ctypes.CDLL(None).prctl(15, b"tunlab-relay", 0, 0, 0)  # PR_SET_NAME: `ps` shows tunlab-relay
    except (OSError, AttributeError):
        pass
    set_cmdline(relay_argv(req["args"]))  # `ps` shows the relay's own command line, not the server's
    sys.argv = ["tunlab", "relay", *req["args"], "--ready-fd", str(ready_fd)]
    from tunlab.relay.command import main

    try:
        main(sys.argv[2:])
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException as exc:  # noqa: BLE001 - a child must never return into the server loop
        print(f"tunlab relay: {type(exc).__name__}: {exc}", file=sys.stderr)
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    return code


def relay_argv(args: list[str]) -> list[str]:
    """The command line a relay of the fork server stands for (recorded in the ledger, shown by `ps`)."""
    return [sys.executable, "-m", "tunlab", "relay", *args]


#: a relay that dies more often than this is left dead (its restarts would only hide a bug)
RESTART_LIMIT, RESTART_WINDOW = 5, 60.0


def describe_status(status: int) -> str:
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = str(sig)
        return f"killed by signal {sig} ({name})"
    return f"exited with status {os.WEXITSTATUS(status) if os.WIFEXITED(status) else status}"


def serve(sock: socket.socket) -> None:
    import select

    import tunlab.relay.command  # noqa: F401  (warm the imports every relay needs, once)
    import tunlab.relay.engine  # noqa: F401
    import tunlab.relay.fast.udp  # noqa: F401  (--datapath auto, the default over UDP)
    import tunlab.relay.loop  # noqa: F401

    set_cmdline([sys.executable, "-m", "tunlab.lab.relayfork", f"(run {os.environ.get('TUNLAB_RUN', '?')})"])
    # The server stays until its relays have all exited (relays whose parent had exited would be re-parented
    # to init, and an init that does not reap, as in some containers, would keep them as zombies). It reaps
    # them itself, so that it can say how each ended (``<node>.exits.jsonl`` in the run directory, and its
    # log) and, when asked (``restart``), start a relay that died abnormally again with the same arguments.
    children: dict[int, dict[str, Any]] = {}

    def on_term(signum: int, frame: object) -> None:
        _stop_children(list(children))
        os._exit(0)

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    sock.send(b'{"ready": true}')
    listening = True
    while listening or children:
        if listening:
            ready, _, _ = select.select([sock], [], [], 0.1)
            if ready:
                msg, fds, _, _ = socket.recv_fds(sock, REQUEST_MAX, 2)
                if not msg:
                    listening = False
                    sock.close()
                else:
                    req = json.loads(msg)
                    req["restarts"] = []
                    pid = _fork(req, fds[0], fds[1], sock if listening else None)
                    children[pid] = req
                    for fd in fds:
                        os.close(fd)
                    sock.send(json.dumps({"pid": pid, "start": proc_start_time(pid)}).encode())
            flags = os.WNOHANG
        else:
            flags = 0
        while children:
            try:
                pid, status = os.waitpid(-1, flags)
            except ChildProcessError:
                children.clear()
                break
            if pid == 0:
                break
            req = children.pop(pid, None)
            if req is not None:
                restarted = _ended(req, pid, status)
                if restarted is not None:
                    children[restarted] = req
            flags = os.WNOHANG


def _fork(req: dict[str, Any], ready_fd: int, out_fd: int, sock: socket.socket | None) -> int:
    pid = os.fork()
    if pid == 0:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        if sock is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        os._exit(_child(req, ready_fd, out_fd, sock))
    return pid


def _ended(req: dict[str, Any], pid: int, status: int) -> int | None:
    """A relay exited: record how, and restart it when that was asked and it died abnormally."""
    import time

    node = req.get("node") or "?"
    how = describe_status(status)
    clean = os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    run_dir = req.get("run_dir")
    now = time.time()
    record = {"node": node, "pid": pid, "status": how, "clean": clean, "time": now}
    restart = bool(req.get("restart")) and not clean
    times = [t for t in req["restarts"] if now - t < RESTART_WINDOW]
    if restart and len(times) >= RESTART_LIMIT:
        restart = False
        record["gave_up"] = f"{len(times)} restarts in {RESTART_WINDOW:.0f} s"
    print(f"relayfork: the relay of node {node} (pid {pid}) {how}"
          + ("; restarting it" if restart else f"; left dead ({record['gave_up']})" if "gave_up" in record else ""),
          file=sys.stderr, flush=True)
    if run_dir:
        _append(os.path.join(run_dir, f"{node}.exits.jsonl"), record)
    if not restart:
        return None
    req["restarts"] = [*times, now]
    out_path = req.get("out_path") or os.devnull
    out_fd = os.open(out_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o640)
    ready_fd = os.open(os.devnull, os.O_WRONLY)  # nobody waits for a restarted relay's ready line
    try:
        new = _fork(req, ready_fd, out_fd, None)
    finally:
        os.close(out_fd)
        os.close(ready_fd)
    if run_dir:  # the ledger, so that teardown stops the new one by pid and start time too
        _append(os.path.join(run_dir, "ledger.jsonl"),
                {"op": "proc", "node": node, "role": "relay", "pid": new, "start": proc_start_time(new),
                 "argv": relay_argv(req["args"]), "restart_of": pid})
    return new


def _append(path: str, entry: dict[str, Any]) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o640)
    except OSError:
        return
    try:
        os.write(fd, (json.dumps(entry, separators=(",", ":")) + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def _stop_children(children: list[int], timeout: float = 2.5) -> None:
    """SIGTERM our relays (they are this run's, recorded in its ledger), give them ``timeout`` to exit
    (they are reaped as they go), then SIGKILL what is left."""
    import time

    def alive() -> list[int]:
        out = []
        for pid in children:
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)  # reap it if it has exited
            except ChildProcessError:
                continue
            if done != pid:
                out.append(pid)
        return out

    for pid in alive():
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while (left := alive()) and time.monotonic() < deadline:
        time.sleep(0.01)
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


class RelayForkServer:
    """The lab's side: start the server (it imports the relay meanwhile), ``spawn`` relays, ``close``."""

    def __init__(self, env: dict[str, str], log_path: str | None = None) -> None:
        import subprocess

        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.sock = ours
        # the server outlives the lab's process (`tunlab up`): it must not hold the caller's stdout/stderr
        log = open(log_path or os.devnull, "ab")
        try:
            # the padding argument is room for the relays' own command lines (set_cmdline), forked from here
            self.proc = subprocess.Popen([sys.executable, "-m", "tunlab.lab.relayfork", str(theirs.fileno()),
                                          " " * CMDLINE_ROOM],
                                         pass_fds=(theirs.fileno(),), env=env, stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=log, start_new_session=True)
        finally:
            log.close()
        theirs.close()
        self._hello = False

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Wait for the server's hello (it has imported the relay); started early, it overlaps other work."""
        if self._hello:
            return
        self.sock.settimeout(timeout)
        if not self.sock.recv(64):
            self.proc.wait(timeout=5)
            raise OSError(f"the relay fork server exited with {self.proc.returncode}")
        self._hello = True

    def spawn(self, args: list[str], netns_file: str, ready_fd: int, out_fd: int,
              env: dict[str, str], **extra: Any) -> tuple[int, int | None]:
        """Fork a relay; ``extra``: ``node``, ``run_dir``, ``out_path`` and ``restart`` (restart it when it
        dies abnormally) for the server's bookkeeping."""
        self.wait_ready()
        req = json.dumps({"args": args, "netns_file": netns_file, "env": env, **extra}).encode()
        socket.send_fds(self.sock, [req], [ready_fd, out_fd])
        reply = self.sock.recv(4096)
        if not reply:
            raise OSError("the relay fork server went away")
        data = json.loads(reply)
        return int(data["pid"]), data.get("start")

    def close(self) -> None:
        """No more relays to start. The server lives on as their parent until they have all exited."""
        self.sock.close()

    def reap(self, timeout: float = 5.0) -> None:
        """After the relays were stopped: wait for the server to exit (SIGKILL it after ``timeout``)."""
        self.sock.close()
        try:
            self.proc.wait(timeout=timeout)
        except Exception:  # noqa: BLE001
            self.proc.kill()
            self.proc.wait()


if __name__ == "__main__":
    _sock = socket.socket(fileno=int(sys.argv[1]))
    serve(_sock)
