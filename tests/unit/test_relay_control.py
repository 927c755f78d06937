"""The relay's control socket protocol (relay/control.py): `stats`, one JSON object per line, a command
registry other stages add to, one-line errors; lab/impairs.py's directions and requests."""

from __future__ import annotations

import json
import socket
import threading

import pytest

from tunlab.errors import TunlabError
from tunlab.lab.impairs import directions, request
from tunlab.relay.control import MAX_LINE, COMMANDS, ControlServer, answer, control_request, query_stats, register_command
from tunlab.relay.loop import Loop


class FakeRelay:
    def __init__(self) -> None:
        self.table = type("T", (), {"peers": {"next": object()}})()
        self.calls: list[tuple[str, str, dict]] = []

    def stage_control(self, peer: str, stage: str, req: dict) -> dict:
        self.calls.append((peer, stage, req))
        return {"peer": peer, "stage": stage, "spec": "x"}


def server(relay: FakeRelay) -> ControlServer:
    return ControlServer(Loop(), "/nonexistent", lambda: {"dev": {}}, relays=[relay])


def test_answers() -> None:
    r = FakeRelay()
    s = server(r)
    assert answer(s, "stats") == {"dev": {}}
    assert answer(s, '{"cmd": "stats"}') == {"ok": True, "stats": {"dev": {}}}
    assert answer(s, '{"cmd": "stage", "peer": "next", "stage": "impair", "set": {"delay": "1ms"}}')["ok"]
    assert answer(s, '{"cmd": "link", "peer": "next", "state": "down"}')["ok"]
    assert r.calls[-1] == ("next", "impair", {"state": "down"})
    for line, msg in (("hello", "not a command"), ("[1]", "JSON object"), ('{"cmd": "fly"}', "unknown command"),
                      ('{"cmd": "stage", "peer": "nope", "stage": "impair"}', "no peer is named 'nope'"),
                      ('{"cmd": "stage", "stage": "impair"}', "'peer' is missing"),
                      ('{"cmd": "link", "peer": "next", "state": "sideways"}', "is not down or up")):
        reply = answer(s, line)
        assert reply["ok"] is False and msg in reply["error"] and "\n" not in reply["error"]


def test_registry_and_a_real_socket(tmp_path) -> None:
    register_command("echo", lambda srv, req: {"echo": req.get("x")})
    try:
        loop = Loop()
        path = str(tmp_path / "c.sock")
        srv = ControlServer(loop, path, lambda: {"dev": {"rx_packets": 1}}, relays=[FakeRelay()])
        srv.open()
        t = threading.Thread(target=loop.run)
        t.start()
        try:
            assert control_request(path, {"cmd": "echo", "x": 5}) == {"ok": True, "echo": 5}
            assert query_stats(path) == {"dev": {"rx_packets": 1}}
            with pytest.raises(TunlabError, match="refused 'nope': unknown command"):
                control_request(path, {"cmd": "nope"})
            s = socket.socket(socket.AF_UNIX)
            s.connect(path)
            s.sendall(b"{" * (MAX_LINE + 1000))  # no newline, past the limit
            assert json.loads(s.makefile().readline())["ok"] is False
            s.close()
        finally:
            loop.stop()
            t.join()
            srv.close()
            loop.close()
    finally:
        del COMMANDS["echo"]


def test_directions_and_requests() -> None:
    assert directions("a-b", "a", "b", None) == [("a", "b"), ("b", "a")]
    assert directions("a-b", "a", "b", "b>a") == [("b", "a")]
    assert directions("x-y", "x", "y", "y>x") == [("y", "x")]
    with pytest.raises(TunlabError, match="direction 'x>z'"):
        directions("x-y", "x", "y", "x>z")
    assert request("delay=1ms") == {"cmd": "stage", "stage": "impair", "set": "delay=1ms"}
    assert request(clear=True) == {"cmd": "stage", "stage": "impair", "clear": True}
    assert request(state="down") == {"cmd": "link", "state": "down"}
    with pytest.raises(TunlabError):
        request()
