"""A dual-stack chain: every node has an IPv4 and an IPv6 overlay address, the kernel VNFs forward both, and
vnf2's nftables ruleset (an ``inet`` table: both families) drops DNS over UDP whichever IP carries it.

The same per-hop checks hold for both: encapsulated at every hop, hop limit / TTL lowered once per kernel VNF,
delivered and answered (ICMPv6 echo reply, port unreachable, TCP resets), or dropped exactly at vnf2.
"""

from tunlab import Ping, Tcp, Udp, Vnf, linear_chain

NO_DNS = """
table inet tunlab_fw {
    chain forward {
        type filter hook forward priority 0; policy accept;
        udp dport 53 counter drop
    }
}
"""


def _vnf(i: int, name: str, overlay: str) -> Vnf:
    return Vnf(name, overlay, nft=NO_DNS) if i == 2 else Vnf(name, overlay)


topology = linear_chain(3, "udp", name="dual_stack", vnf=_vnf, overlay_net6="fd00:16::/64")
traffic = [
    Ping(),                                          # IPv4 (the first overlay)
    Ping(family=6),
    Ping(family=6, size="mtu"),
    Udp(5000, family=6, expect="reply"),             # ICMPv6 port unreachable
    Tcp(80, family=6, count=2),
    Udp(53, family=6, expect="dropped at vnf2"),
    Udp(53, expect="dropped at vnf2"),
    Tcp(80, dst="fd00:16::2", flags="PA", payload=b"hi"),
]
