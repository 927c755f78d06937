"""The control socket: a unix stream socket served from the relay's own event loop.

Protocol: the client sends one line (``stats``), the relay answers one JSON line and closes. Served
non-blocking inside the loop, so a slow or silent client never stalls packets.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import stat
import time
from typing import Any, Callable

from tunlab.errors import TunlabError

from .loop import EPOLLIN, Loop

MAX_CLIENTS = 16
CLIENT_TIMEOUT = 2.0


def _gid(group: str) -> int:
    if group.isdigit():
        return int(group)
    import grp

    return grp.getgrnam(group).gr_gid


class ControlServer:
    def __init__(self, loop: Loop, path: str, counters: Callable[[], dict[str, Any]], *,
                 group: str | None = None) -> None:
        self.loop = loop
        self.group = group
        self.path = path
        self.counters = counters
        self.sock: socket.socket | None = None
        self.clients: dict[int, tuple[socket.socket, bytearray, float]] = {}

    def open(self) -> None:
        path = self.path
        if os.path.lexists(path):
            st = os.lstat(path)
            if not stat.S_ISSOCK(st.st_mode):
                raise TunlabError(f"--control {path}: exists and is not a socket", "pick another path")
            if _answers(path):
                raise TunlabError(f"--control {path}: another relay is serving this socket", "pick another path")
            os.unlink(path)  # a stale socket left by a relay that was killed
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
        try:
            sock.bind(path)
        except OSError as exc:
            sock.close()
            raise TunlabError(f"--control {path}: cannot create the socket: {exc.strerror}") from None
        # explicit mode whatever the umask, set before listen(): nobody can connect in between
        try:
            mode = 0o600
            if self.group:
                os.chown(path, -1, _gid(self.group))
                mode = 0o660
            os.chmod(path, mode)
        except (OSError, KeyError, ValueError) as exc:
            sock.close()
            os.unlink(path)
            raise TunlabError(f"--control {path}: cannot set its owner and mode ({exc})",
                              "--control-group takes a group name or number") from None
        sock.listen(8)
        self.sock = sock
        self.loop.add(sock.fileno(), EPOLLIN, self._on_accept)

    def _on_accept(self, events: int) -> None:
        assert self.sock is not None
        while True:
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, OSError):
                return
            self._expire()
            if len(self.clients) >= MAX_CLIENTS:
                conn.close()
                continue
            conn.setblocking(False)
            fd = conn.fileno()
            self.clients[fd] = (conn, bytearray(), time.monotonic())
            self.loop.add(fd, EPOLLIN, lambda ev, fd=fd: self._on_client(fd))

    def _on_client(self, fd: int) -> None:
        conn, buf, _ = self.clients[fd]
        try:
            data = conn.recv(256)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        buf += data
        if not data or b"\n" in buf or len(buf) > 200:
            cmd = bytes(buf).split(b"\n", 1)[0].strip().decode("ascii", "replace")
            if cmd in ("stats", ""):
                reply: dict[str, Any] = self.counters()
            else:
                reply = {"error": f"unknown command {cmd[:40]!r}; known: stats"}
            try:
                conn.setblocking(True)
                conn.settimeout(0.5)
                conn.sendall(json.dumps(reply, separators=(",", ":")).encode() + b"\n")
            except OSError:
                pass
            self._drop(fd)

    def _expire(self) -> None:
        now = time.monotonic()
        for fd, (_, _, t) in list(self.clients.items()):
            if now - t > CLIENT_TIMEOUT:
                self._drop(fd)

    def _drop(self, fd: int) -> None:
        entry = self.clients.pop(fd, None)
        if entry is not None:
            self.loop.remove(fd)
            entry[0].close()

    def close(self) -> None:
        for fd in list(self.clients):
            self._drop(fd)
        if self.sock is not None:
            self.loop.remove(self.sock.fileno())
            self.sock.close()
            self.sock = None
            try:
                os.unlink(self.path)
            except OSError:
                pass


def _answers(path: str) -> bool:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(0.5)
    try:
        s.connect(path)
        return True
    except OSError:
        return False
    finally:
        s.close()


def query_stats(path: str, timeout: float = 3.0) -> dict[str, Any]:
    """Ask the relay serving ``path`` for its counters (the JSON documented in docs/ARCHITECTURE.md)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        try:
            s.connect(path)
        except FileNotFoundError:
            raise TunlabError(f"no control socket at {path}", "is the relay running with --control?") from None
        except OSError as exc:
            hint = "the relay is gone (stale socket)" if exc.errno == errno.ECONNREFUSED else None
            raise TunlabError(f"cannot reach the relay at {path}: {exc.strerror}", hint) from None
        s.sendall(b"stats\n")
        data = bytearray()
        while not data.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    except TimeoutError:
        raise TunlabError(f"the relay at {path} did not answer within {timeout:g}s") from None
    finally:
        s.close()
    try:
        reply = json.loads(bytes(data))
    except ValueError:
        raise TunlabError(f"the relay at {path} sent something that is not JSON") from None
    if not isinstance(reply, dict):
        raise TunlabError(f"the relay at {path} sent an unexpected answer")
    return reply
