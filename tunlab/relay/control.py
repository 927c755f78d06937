"""The control socket: a unix stream socket served from the relay's own event loop.

Protocol: the client sends one line, the relay answers one JSON line and closes. Served non-blocking inside
the loop, so a slow or silent client never stalls packets. The line is ``stats`` (the counters JSON, as
ever) or one JSON object ``{"cmd": NAME, ...}``; the answer is ``{"ok": true, ...}`` or ``{"ok": false,
"error": "one line"}``. Commands live in :data:`COMMANDS` (``register_command``): ``stats``, ``stage``
(``{"cmd": "stage", "peer": NAME, "stage": "impair", "set": {...} | "delay=20ms", "clear": true}``) and
``link`` (``{"cmd": "link", "peer": NAME, "state": "down"|"up"}``) and, in NSH mode, ``nsh`` (``{"cmd": "nsh",
"set": {"classifier": [...], "forward": [...]}}``, docs/nsh.md).
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
MAX_LINE = 1 << 16  # bytes of one request line (a JSON request may carry a whole NSH table)

#: a command: handler(server, request) -> reply fields (``ok`` is added); raise TunlabError to refuse
Command = Callable[["ControlServer", dict[str, Any]], dict[str, Any]]
COMMANDS: dict[str, Command] = {}


def register_command(name: str, handler: Command) -> None:
    """Add a control command (e.g. NSH's, issue 18). The handler runs inside the relay's loop."""
    COMMANDS[name] = handler


def _find_relay(server: "ControlServer", request: dict[str, Any]) -> tuple[Any, str]:
    peer = request.get("peer")
    if not isinstance(peer, str) or not peer:
        raise TunlabError("'peer' is missing", "name the peer, e.g. {\"peer\": \"next\"}")
    for r in server.relays:
        if peer in r.table.peers:
            return r, peer
    names = sorted(p for r in server.relays for p in r.table.peers)
    raise TunlabError(f"no peer is named {peer!r}", f"peers: {', '.join(names)}")


def _cmd_stats(server: "ControlServer", request: dict[str, Any]) -> dict[str, Any]:
    return {"stats": server.counters()}


def _cmd_stage(server: "ControlServer", request: dict[str, Any]) -> dict[str, Any]:
    relay, peer = _find_relay(server, request)
    stage = request.get("stage")
    if not isinstance(stage, str):
        raise TunlabError("'stage' is missing", "e.g. \"stage\": \"impair\"")
    return dict(relay.stage_control(peer, stage, request))


def _cmd_link(server: "ControlServer", request: dict[str, Any]) -> dict[str, Any]:
    relay, peer = _find_relay(server, request)
    if request.get("state") not in ("down", "up"):
        raise TunlabError(f"state {request.get('state')!r} is not down or up")
    return dict(relay.stage_control(peer, "impair", {"state": request["state"]}))


COMMANDS.update(stats=_cmd_stats, stage=_cmd_stage, link=_cmd_link)


def answer(server: "ControlServer", line: str) -> dict[str, Any]:
    """The reply to one request line (never raises)."""
    if line in ("stats", ""):
        return server.counters()
    try:
        request = json.loads(line)
    except ValueError:
        return {"ok": False, "error": f"not a command: {line[:40]!r} (send 'stats' or one JSON object)"}
    if not isinstance(request, dict) or not isinstance(request.get("cmd"), str):
        return {"ok": False, "error": "a request is a JSON object with \"cmd\""}
    handler = COMMANDS.get(request["cmd"])
    if handler is None:
        return {"ok": False, "error": f"unknown command {request['cmd'][:40]!r}; known: {', '.join(sorted(COMMANDS))}"}
    try:
        return {"ok": True, **handler(server, request)}
    except TunlabError as exc:
        return {"ok": False, "error": str(exc)}
    except Exception as exc:  # a command's bug answers an error, never stops the relay
        return {"ok": False, "error": f"{request['cmd']}: {type(exc).__name__}: {exc}"}


def _gid(group: str) -> int:
    if group.isdigit():
        return int(group)
    import grp

    return grp.getgrnam(group).gr_gid


class ControlServer:
    def __init__(self, loop: Loop, path: str, counters: Callable[[], dict[str, Any]], *,
                 group: str | None = None, relays: Any = ()) -> None:
        self.loop = loop
        self.relays = list(relays)
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
            data = conn.recv(4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        buf += data
        if not data or b"\n" in buf or len(buf) > MAX_LINE:
            if b"\n" not in buf and len(buf) > MAX_LINE:
                reply: dict[str, Any] = {"ok": False, "error": f"request longer than {MAX_LINE} bytes"}
            else:
                line = bytes(buf).split(b"\n", 1)[0].strip().decode("utf-8", "replace")
                reply = answer(self, line)
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
    return _ask(path, b"stats\n", timeout)


def control_request(path: str, request: dict[str, Any], timeout: float = 3.0) -> dict[str, Any]:
    """Send one JSON command to the relay serving ``path``; its ``{"ok": true, ...}`` reply, or a
    TunlabError with the relay's one-line error."""
    reply = _ask(path, json.dumps(request, separators=(",", ":")).encode() + b"\n", timeout)
    if reply.get("ok") is not True:
        raise TunlabError(f"the relay at {path} refused {request.get('cmd')!r}: {reply.get('error', reply)}")
    return reply


def request(path: str, req: dict[str, Any], timeout: float = 3.0) -> dict[str, Any]:
    """Send one JSON command; the relay's reply as it is (``{"ok": false, ...}`` included, never raised)."""
    return _ask(path, json.dumps(req, separators=(",", ":")).encode() + b"\n", timeout)


def _ask(path: str, line: bytes, timeout: float) -> dict[str, Any]:
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
        s.sendall(line)
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
