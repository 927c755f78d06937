"""The relay's NSH mode without root (loopback sockets, a socketpair for the TUN, as test_relay_engine.py), the
JSON control requests, and the --nsh file's errors. The real chain in namespaces: tests/netns/test_relay_nsh.py."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
from test_relay_engine import FakeDev, devs, ipv4, port_of, running, wait_until  # noqa: F401

from tunlab.errors import TunlabError
from tunlab.relay import PeerSpec, Relay, RelayConfig, nsh, query_stats
from tunlab.relay.config import ConfigError
from tunlab.relay.control import request
from tunlab.relay.sff import NshTables


def nsh_file(tmp_path: Path, name: str, data: dict) -> str:
    p = tmp_path / f"{name}.json"
    p.write_text(json.dumps(data))
    return str(p)


def test_classify_forward_end_and_control(devs: dict[str, FakeDev], tmp_path: Path) -> None:
    fa = nsh_file(tmp_path, "a", {"classifier": [{"spi": 5, "si": 9, "dst": "10.9.0.2/32", "context": "11" * 16}],
                                  "forward": [{"spi": 5, "si": 9, "to": "b"}]})
    fb = nsh_file(tmp_path, "b", {"forward": [{"spi": 5, "si": 9, "to": "end"}]})
    b = Relay(RelayConfig(dev="b", listen=("127.0.0.1", 0), peers=(PeerSpec("a", "127.0.0.1"),), nsh_file=fb),
              device=devs["b"].device)
    b.open()
    a = Relay(RelayConfig(dev="a", listen=("127.0.0.1", 0), nsh_file=fa,
                          peers=(PeerSpec("b", "127.0.0.1", port_of(b), True),)), device=devs["a"].device)
    sniff = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    ctl = str(tmp_path / "b.sock")
    with running(a), running(b, control=ctl):
        devs["b"].send(ipv4("10.9.0.1"))  # b has no classifier: its device's packets are not NSH'd
        wait_until(lambda: b.counters()["drops"].get("nsh_unclassified") == 1, "b counted the unclassified one")
        pkt = ipv4("10.9.0.2", fill=7)
        devs["a"].send(pkt)
        assert devs["b"].recv() == pkt   # NSH pushed at a, stripped at b: the same inner packet
        devs["a"].send(ipv4("10.9.0.3"))  # no rule matches
        wait_until(lambda: a.counters()["drops"].get("nsh_unclassified") == 1, "a counted the unmatched one")
        # a stranger sends to a (which takes only b's address and port): foreign, dropped
        sniff.sendto(nsh.gpe_header() + nsh.Nsh(5, 9).encode() + pkt, ("127.0.0.1", port_of(a)))
        wait_until(lambda: a.counters()["drops"].get("foreign") == 1, "a dropped the stranger")
        assert a.counters()["nsh"]["classified"] == 1 and b.counters()["nsh"]["delivered"] == 1
        assert b.counters()["nsh"]["lookups"] == {"5/9": 1}
        # the control socket: "stats" as before, JSON requests, errors as {"ok": false, "error": ...}
        wait_until(lambda: os.path.exists(ctl), "the control socket")
        assert query_stats(ctl)["nsh"]["delivered"] == 1
        st = request(ctl, {"cmd": "stats"})
        assert st["ok"] and st["stats"]["dev"]["tx_packets"] == 1
        got = request(ctl, {"cmd": "nsh"})
        assert got["ok"] and got["tables"]["forward"] == [{"spi": 5, "si": 9, "to": "end"}]
        nope = request(ctl, {"cmd": "nope"})
        assert nope["ok"] is False and nope["error"].startswith("unknown command 'nope'; known: ") and "nsh" in nope["error"]
        assert not request(ctl, {"cmd": "nsh", "set": {"forward": [{"spi": 5, "si": 0, "to": "end"}]}})["ok"]
        assert not request(ctl, {"cmd": "nsh", "set": {"what": 1}})["ok"]
        assert request(ctl, {"nocmd": 1})["ok"] is False
        changed = request(ctl, {"cmd": "nsh", "set": {"forward": []}})
        assert changed["ok"] and changed["tables"]["forward"] == []
        devs["a"].send(pkt)
        wait_until(lambda: b.counters()["drops"].get("nsh_no_path") == 1, "b has no path for 5/9 any more")
    sniff.close()


def test_plain_relay_refuses_nsh_requests(devs: dict[str, FakeDev], tmp_path: Path) -> None:
    r = Relay(RelayConfig(dev="a", listen=("127.0.0.1", 0), peers=(PeerSpec("b", "127.0.0.1"),)),
              device=devs["a"].device)
    ctl = str(tmp_path / "a.sock")
    with running(r, control=ctl):
        wait_until(lambda: os.path.exists(ctl), "the control socket")
        reply = request(ctl, {"cmd": "nsh"})
        assert reply["ok"] is False and "--nsh" in reply["error"]


@pytest.mark.parametrize("data,msg", [
    ({"forward": [{"spi": 1, "si": 1, "to": "zz"}]}, "forward[0]: to 'zz' is not a peer"),
    ({"forward": [{"spi": 1, "si": 1}]}, "forward[0]: expected"),
    ({"forward": [{"spi": 1, "si": 1, "to": "sf"}, {"spi": 1, "si": 1, "to": "end"}]}, "listed twice"),
    ({"classifier": [{"si": 1}]}, "classifier[0]: a rule needs spi"),
    ({"vni": -1}, "vni -1 is out of range"),
    ({"fwd": []}, "unknown field 'fwd'"),
])
def test_table_errors_name_file_entry_field(data: dict, msg: str) -> None:
    with pytest.raises(TunlabError) as e:
        NshTables(data, "n1.nsh.json", {"up", "down"})
    assert str(e.value).startswith("n1.nsh.json: ") and msg in str(e.value)


def test_nsh_mode_options() -> None:
    with pytest.raises(ConfigError, match="--nsh"):
        RelayConfig(dev="a", transport="tcp", peers=(PeerSpec("b", "127.0.0.1", 1, True),), nsh_file="x")
    cfg = RelayConfig(dev="a", peers=(PeerSpec("b", "127.0.0.1", 1, True),), nsh_file="x")
    assert cfg.default_mtu() == 1472 - 64
