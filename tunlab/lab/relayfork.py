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

from tunlab.system.procs import proc_start_time

REQUEST_MAX = 1 << 20


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


def serve(sock: socket.socket) -> None:
    import tunlab.relay.command  # noqa: F401  (warm the imports every relay needs, once)
    import tunlab.relay.engine  # noqa: F401
    import tunlab.relay.fast.udp  # noqa: F401  (--datapath auto, the default over UDP)
    import tunlab.relay.loop  # noqa: F401

    # Children are reaped by the kernel while this server lives, so it stays until they have all exited:
    # relays whose parent had exited would be re-parented to init, and an init that does not reap (as in
    # some containers and VMs) would keep every stopped relay as a zombie.
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    children: list[int] = []

    def on_term(signum: int, frame: object) -> None:
        _stop_children(children)
        os._exit(0)

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    sock.send(b'{"ready": true}')
    while True:
        msg, fds, _, _ = socket.recv_fds(sock, REQUEST_MAX, 2)
        if not msg:
            break
        req = json.loads(msg)
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os._exit(_child(req, fds[0], fds[1], sock))
        children.append(pid)
        for fd in fds:
            os.close(fd)
        sock.send(json.dumps({"pid": pid, "start": proc_start_time(pid)}).encode())
    sock.close()
    try:
        os.wait()  # with SIGCHLD ignored: returns ECHILD once every child has exited
    except ChildProcessError:
        pass


def _stop_children(children: list[int], timeout: float = 2.5) -> None:
    """SIGTERM our relays (they are this run's, recorded in its ledger), give them ``timeout`` to exit
    (they are reaped as they go), then SIGKILL what is left."""
    import time

    def alive() -> list[int]:
        out = []
        for pid in children:
            try:
                os.kill(pid, 0)
                out.append(pid)
            except ProcessLookupError:
                pass
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
            self.proc = subprocess.Popen([sys.executable, "-m", "tunlab.lab.relayfork", str(theirs.fileno())],
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
              env: dict[str, str]) -> tuple[int, int | None]:
        self.wait_ready()
        req = json.dumps({"args": args, "netns_file": netns_file, "env": env}).encode()
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
