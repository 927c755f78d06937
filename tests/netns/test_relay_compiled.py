"""The compiled datapath (issue 20) in real namespaces: compiled tunnels and a three-VNF chain carry TCP
with matching hashes; compiled and Python relays interoperate in both directions (gso, plain, TCP
framing); socat interoperates with the compiled path; a flood of malformed chunks and packets at the
compiled receiver is counted and survived; where the extension cannot be used (TUNLAB_DATAPATH_IMPL=python,
its import blocked) the Python datapath runs and the ready line and counters say why.
"""

from __future__ import annotations

import random

import pytest
from relay_helpers import NetLab, RelayProc, netlab, ns_socket, ping, sh, two_nodes, wait_until  # noqa: F401
from test_fast import send_file

from tunlab.relay.fast import encap

pytestmark = pytest.mark.netns

pytest.importorskip("tunlab.relay.fast._cfast", reason="the compiled datapath is not built")

PORT = 47420
PYTHON = {"TUNLAB_DATAPATH_IMPL": "python"}


def relay(lab: NetLab, ns: str, tag: str, addr: str, listen: str, peers: list[str], *extra: str,
          env: dict[str, str] | None = None) -> RelayProc:
    args = ["--dev", lab.ifname(tag), "--addr", addr, "--listen", listen]
    for p in peers:
        args += ["--peer", p]
    return lab.relay(ns, tag, *args, *extra, env=env)


def impl(rp: RelayProc) -> str:
    return str(rp.counters()["datapath"]["impl"])


def pair(lab: NetLab, *extra: str, env_a: dict[str, str] | None = None,
         env_b: dict[str, str] | None = None) -> tuple[str, str, RelayProc, RelayProc]:
    a, b = two_nodes(lab)
    ra = relay(lab, a, "ta", "10.2.0.1/24", f"10.1.0.1:{PORT}", [f"b=10.1.0.2:{PORT}"], *extra, env=env_a)
    rb = relay(lab, b, "tb", "10.2.0.2/24", f"10.1.0.2:{PORT}", [f"a=10.1.0.1:{PORT}"], *extra, env=env_b)
    return a, b, ra, rb


def test_compiled_tunnel_carries_tcp_and_says_so(netlab: NetLab) -> None:
    a, b, ra, rb = pair(netlab)
    assert ra.ready["datapath"]["impl"] == rb.ready["datapath"]["impl"] == "c"  # the ready line
    assert "impl c" in ra.output()  # and the log's ready line
    wait_until(lambda: ra.counters()["datapath"]["peers"]["b"]["datapath"] == "gso"
               and rb.counters()["datapath"]["peers"]["a"]["datapath"] == "gso", "both ends on gso")
    ping(a, "10.2.0.2")
    send_file(netlab, a, b, "10.2.0.2")
    send_file(netlab, b, a, "10.2.0.1", size=2 << 20)
    ca, cb = ra.counters(), rb.counters()
    assert ca["datapath"]["impl"] == "c" and ca["datapath"]["peers"]["b"]["impl"] == "c"
    # the C loops counted what they carried, as the Python datapath does
    assert ca["peers"]["b"]["tx_bytes"] > 8 << 20 and cb["peers"]["a"]["rx_bytes"] > 8 << 20
    assert cb["datapath"]["whole_streams_rx"] > 0 and ca["datapath"]["segments_read"] > ca["dev"]["rx_packets"]
    assert cb["dev"]["tx_bytes"] >= 8 << 20 and not cb["drops"].get("chunk_malformed")


@pytest.mark.parametrize("mode", ["auto", "plain"])
def test_compiled_and_python_relays_interoperate_both_ways(netlab: NetLab, mode: str) -> None:
    a, b, ra, rb = pair(netlab, "--datapath", mode, env_b=PYTHON)
    assert impl(ra) == "c" and impl(rb) == "python"
    assert rb.ready["datapath"]["impl_reason"] == "TUNLAB_DATAPATH_IMPL=python"
    if mode == "auto":
        wait_until(lambda: rb.counters()["datapath"]["peers"]["a"]["datapath"] == "gso"
                   and ra.counters()["datapath"]["peers"]["b"]["datapath"] == "gso", "both ends on gso")
    ping(a, "10.2.0.2")
    send_file(netlab, a, b, "10.2.0.2", size=4 << 20)
    send_file(netlab, b, a, "10.2.0.1", size=4 << 20)


@pytest.mark.parametrize("link", ["c", "python"])
def test_compiled_and_python_tcp_framing_interoperate(netlab: NetLab, link: str) -> None:
    """TCP framing, compiled a and Python b; with link=python, a carries its link to b in Python too
    (as a link with stages is carried) while its datapath stays the compiled one."""
    a, b = two_nodes(netlab)
    rb = netlab.relay(b, "tb", "--transport", "tcp", "--dev", netlab.ifname("tb"), "--addr", "10.2.0.2/24",
                      "--listen", f"10.1.0.2:{PORT}", "--accept", "a=10.1.0.1", env=PYTHON)
    ra = netlab.relay(a, "ta", "--transport", "tcp", "--dev", netlab.ifname("ta"), "--addr", "10.2.0.1/24",
                      "--peer", f"b=10.1.0.2:{PORT}",
                      env={"TUNLAB_DATAPATH_PYTHON_PEERS": "b"} if link == "python" else None)
    assert ra.ready["datapath"]["impl"] == "c" and rb.ready["datapath"]["impl"] == "python"
    assert ra.counters()["datapath"]["peers"]["b"]["impl"] == link
    ra.wait_connected("b")
    ping(a, "10.2.0.2")
    send_file(netlab, a, b, "10.2.0.2", size=4 << 20)
    send_file(netlab, b, a, "10.2.0.1", size=4 << 20)
    assert ra.counters()["peers"]["b"]["rx_bytes"] > 4 << 20


def test_compiled_relay_and_socat_carry_tcp_both_ways(netlab: NetLab) -> None:
    a, b = two_nodes(netlab)
    dev_b = netlab.ifname("sb")
    netlab.spawn(b, "socat", f"TUN:10.2.0.2/24,tun-name={dev_b},tun-type=tun,iff-no-pi,iff-up",
                 f"UDP-DATAGRAM:10.1.0.1:{PORT},bind=10.1.0.2:{PORT}")
    wait_until(lambda: "UP" in sh("ip", "-n", b, "link", "show", "dev", dev_b, check=False).stdout, "socat's TUN")
    sh("ip", "-n", b, "link", "set", dev_b, "mtu", "1472")
    ra = relay(netlab, a, "ta", "10.2.0.1/24", f"10.1.0.1:{PORT}", [f"s=10.1.0.2:{PORT}"])
    assert impl(ra) == "c"
    ping(a, "10.2.0.2", deadline=15)
    send_file(netlab, a, b, "10.2.0.2", size=2 << 20)
    send_file(netlab, b, a, "10.2.0.1", size=2 << 20)
    assert ra.counters()["datapath"]["peers"]["s"]["datapath"] == "plain"


def test_three_vnf_chain_of_mixed_relays_carries_tcp(netlab: NetLab) -> None:
    """s - v1 - v2 - v3 - d, every relay compiled but v2 (Python): kernels forward whole super-packets."""
    names = ["s", "v1", "v2", "v3", "d"]
    nodes = [netlab.ns(n) for n in names]
    for k in range(4):
        netlab.veth(nodes[k], nodes[k + 1], [f"10.1.{k + 1}.1/24"], [f"10.1.{k + 1}.2/24"], tag=f"h{k}")
    relays = []
    for k, ns in enumerate(nodes):
        peers, routes = [], []
        if k > 0:  # back toward the source: its address and the VNFs' before this one
            peers.append(f"l=10.1.{k}.1:{PORT}")
            routes += [x for j in range(1, k + 1) for x in ("--route", f"10.3.0.{j}/32=l")]
        if k < 4:  # everything else onward
            peers.append(f"r=10.1.{k + 1}.2:{PORT}")
            routes += ["--route", "default=r"]
        relays.append(relay(netlab, ns, f"t{k}", f"10.3.0.{k + 1}/24", f"0.0.0.0:{PORT}", peers, *routes,
                            env=PYTHON if names[k] == "v2" else None))
    assert [impl(r) for r in relays] == ["c", "c", "python", "c", "c"]
    wait_until(lambda: all(p["datapath"] == "gso" for r in relays for p in r.counters()["datapath"]["peers"].values()),
               "every hop on gso")
    ping(nodes[0], "10.3.0.5", deadline=15)
    send_file(netlab, nodes[0], nodes[4], "10.3.0.5", size=4 << 20)
    send_file(netlab, nodes[4], nodes[0], "10.3.0.1", size=2 << 20)
    c3 = relays[3].counters()
    assert c3["peers"]["r"]["tx_bytes"] > 4 << 20 and c3["datapath"]["impl"] == "c"


def test_flood_of_malformed_chunks_at_the_compiled_receiver(netlab: NetLab) -> None:
    a, b = two_nodes(netlab)
    rb = netlab.relay(b, "tb", "--dev", netlab.ifname("tb"), "--addr", "10.2.0.2/24", "--listen",
                      f"10.1.0.2:{PORT}", "--accept", "a=10.1.0.1", "--datapath", "gso")
    ra = relay(netlab, a, "ta", "10.2.0.1/24", f"10.1.0.1:{PORT}", [f"b=10.1.0.2:{PORT}"], "--datapath", "gso")
    assert impl(rb) == "c"
    ping(a, "10.2.0.2")
    rng = random.Random(20)
    good = encap.split_stream(encap.ZERO_VNET + bytes([0x45]) + rng.randbytes(3000), queue=0, pid=1, csize=1460)
    flood: list[bytes] = [b"", b"\xa7", b"\xa7\x1b" + rng.randbytes(10)]
    for _ in range(300):  # chunks with a few bytes changed, cut anywhere
        c = bytearray(rng.choice(good))
        for _ in range(rng.randint(1, 4)):
            c[rng.randrange(len(c))] = rng.randrange(256)
        flood.append(bytes(c[:rng.randint(0, len(c))]))
    flood += [bytes([0x45]) + rng.randbytes(rng.randint(0, 2000)) for _ in range(100)]
    flood += [rng.randbytes(rng.randint(1, 1472)) for _ in range(100)]
    # from the accepted peer's address (another port): the flood passes the source check and reaches the
    # loops; what proves valid moves the reply port there, and a's next datagram moves it back
    sock = ns_socket(a)
    try:
        sock.bind(("10.1.0.1", 0))
        for d in flood:
            sock.sendto(d, ("10.1.0.2", PORT))
    finally:
        sock.close()
    wait_until(lambda: sum(rb.counters()["drops"].values()) > 100, "the flood counted")
    assert rb.proc.poll() is None and ra.proc.poll() is None
    ping(a, "10.2.0.2")  # still carrying
    ping(b, "10.2.0.1")
    send_file(netlab, a, b, "10.2.0.2", size=1 << 20)


def test_python_fallback_when_the_extension_is_absent(netlab: NetLab) -> None:
    """Import blocked (as where no compiler was there at install time): Python runs and says why."""
    block = netlab.tmp / "block"
    block.mkdir()
    (block / "sitecustomize.py").write_text("import sys\nsys.modules['tunlab.relay.fast._cfast'] = None\n")
    a, b, ra, rb = pair(netlab, env_a={"PYTHONPATH": str(block)})
    assert ra.ready["datapath"]["impl"] == "python", ra.ready
    assert "compiled datapath unavailable" in ra.ready["datapath"]["impl_reason"]
    assert "impl python (compiled datapath unavailable" in ra.output()
    assert rb.ready["datapath"]["impl"] == "c"
    ping(a, "10.2.0.2")
    send_file(netlab, a, b, "10.2.0.2", size=2 << 20)


def test_a_link_can_fall_back_to_python_alone(netlab: NetLab) -> None:
    """A peer whose link needs Python (stages; here named in $TUNLAB_DATAPATH_PYTHON_PEERS) is carried
    by Python while the relay's other links stay compiled, and the log says why."""
    s, v, d = netlab.ns("s"), netlab.ns("v"), netlab.ns("d")
    netlab.veth(s, v, ["10.1.1.1/24"], ["10.1.1.2/24"], tag="x")
    netlab.veth(v, d, ["10.1.2.1/24"], ["10.1.2.2/24"], tag="y")
    relay(netlab, s, "ts", "10.3.0.1/24", f"10.1.1.1:{PORT}", [f"v=10.1.1.2:{PORT}"])
    rv = relay(netlab, v, "tv", "10.3.0.2/24", f"0.0.0.0:{PORT}", [f"s=10.1.1.1:{PORT}", f"d=10.1.2.2:{PORT}"],
               "--route", "10.3.0.1/32=s", "--route", "default=d", env={"TUNLAB_DATAPATH_PYTHON_PEERS": "d"})
    relay(netlab, d, "td", "10.3.0.3/24", f"10.1.2.2:{PORT}", [f"v=10.1.2.1:{PORT}"])
    peers = rv.counters()["datapath"]["peers"]
    assert peers["s"]["impl"] == "c" and peers["d"]["impl"] == "python"
    assert "peer d: datapath python ($TUNLAB_DATAPATH_PYTHON_PEERS)" in rv.output()
    ping(s, "10.3.0.3", deadline=15)
    send_file(netlab, s, d, "10.3.0.3", size=2 << 20)
    send_file(netlab, d, s, "10.3.0.1", size=2 << 20)
