"""NSH service paths sharing a firewall SF (issue 18): vnf1's nftables ruleset is the firewall; path 10 (all
traffic from sender to receiver) visits vnf1 then vnf2 (SI 255 -> 253), path 20 (UDP to port 5000) visits
vnf1 only (SI 100 -> 99), each with its reverse path (11, 21). The checks compare SPI, SI, TTL and the
classifier's metadata on every hop with what the relays' tables say, both ways.
"""

from tunlab import Ping, ServicePath, Udp, Vnf, linear_chain

FIREWALL = """
table inet tunlab_fw {
    chain forward {
        type filter hook forward priority 0; policy accept;
        udp dport 53 counter drop
    }
}
"""


def _vnf(i: int, name: str, overlay: str) -> Vnf:
    return Vnf(name, overlay, nft=FIREWALL) if i == 1 else Vnf(name, overlay)


topology = linear_chain(2, "udp", name="nsh_firewall", port=4790, vnf=_vnf, service_paths=(
    ServicePath(20, ("sender", "vnf1", "vnf2", "receiver"), si=100, skip=("vnf2",), proto="udp", dport="5000",
                context="000000000000000000000000000000" + "14"),
    ServicePath(10, ("sender", "vnf1", "vnf2", "receiver"), context="00" * 15 + "0a"),
))
traffic = [
    Ping(),
    Ping(size="mtu"),
    Udp(5000, size=120),
    Udp(53, size=80, expect="dropped at vnf1"),
]
