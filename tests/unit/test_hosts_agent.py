"""Issue 19: the host agent's protocol (one JSON reply per request line) and a host's NAT ruleset, without root."""

from __future__ import annotations

import io
import json

from tunlab.lab.backends.hostpart import nat_ruleset, nft_table
from tunlab.model.hosts import Uplink
from tunlab.run.hostagent import pack, serve, unpack


def talk(*lines: str) -> list[dict[str, object]]:
    out = io.BytesIO()
    assert serve(io.BytesIO("".join(line + "\n" for line in lines).encode()), out) == 0
    return [json.loads(x) for x in out.getvalue().decode().splitlines()]


def test_every_request_gets_one_line_and_errors_are_one_line() -> None:
    hello, bad, unknown, early, down = talk(json.dumps({"cmd": "hello", "underlay": "192.0.2.77", "peers": []}),
                                            "not json", json.dumps({"cmd": "fly"}), json.dumps({"cmd": "connect"}),
                                            json.dumps({"cmd": "down"}))
    assert hello["ok"] is True and hello["mtu"] is None and hello["unreached"] == []  # nobody holds 192.0.2.77
    assert isinstance(hello["version"], str) and isinstance(hello["time"], float)
    assert bad == {"ok": False, "error": bad["error"]} and str(bad["error"]).startswith("bad request:")
    assert unknown == {"ok": False, "error": "unknown agent request 'fly'"}
    assert early["ok"] is False and "no part of a lab up" in str(early["error"])
    assert down == {"ok": True, "errors": [], "final_counters": {}}


def test_the_agent_stops_after_down_and_at_the_end_of_input() -> None:
    assert len(talk(json.dumps({"cmd": "down"}), json.dumps({"cmd": "hello"}))) == 1  # nothing after down
    assert talk() == []


def test_objects_travel_whole() -> None:
    frames = {"link:a-b": [(1.5, b"\x45\x00", True)]}
    assert unpack(pack(frames)) == frames


def test_nat_ruleset_forwards_the_hosts_port_to_the_node_and_back() -> None:
    u = Uplink(link="vnf2-vnf3", node="vnf2", ifname="ve-abcd-2a", host_ifname="vh-abcd-2a", node_addr="10.0.0.9/30",
               host_addr="10.0.0.10/30", node_port=55555, hport=42200, underlay="10.77.0.1", peer_host="h2",
               peer_underlay="10.77.0.2", peer_hport=42201, transport="udp")
    text = nat_ruleset("abcd", [u])
    assert text.startswith(f"table ip {nft_table('abcd')} {{")
    assert "ip daddr 10.77.0.1 udp dport 42200 dnat to 10.0.0.9:55555" in text
    assert "ip saddr 10.0.0.9 ip daddr 10.77.0.2 udp sport 55555 udp dport 42201 snat to 10.77.0.1:42200" in text
    tcp = nat_ruleset("abcd", [Uplink(**{**u.__dict__, "transport": "tcp"})])
    assert "tcp dport 42200 dnat to 10.0.0.9:55555" in tcp
    assert "ip saddr 10.0.0.9 ip daddr 10.77.0.2 tcp dport 42201 snat to 10.77.0.1" in tcp
