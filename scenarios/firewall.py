"""A firewall VNF: vnf2's nftables ruleset drops DNS over UDP and telnet; everything else must pass.

The drop checks prove each blocked packet reaches vnf2 (in through its TUN) and goes no further; the
other flows must cross the whole chain and be answered.
"""

from tunlab import Ping, Tcp, Udp, Vnf, linear_chain

FIREWALL = """
table inet tunlab_fw {
    chain forward {
        type filter hook forward priority 0; policy accept;
        udp dport 53 counter drop
        tcp dport 23 counter drop
    }
}
"""


def _vnf(i: int, name: str, overlay: str) -> Vnf:
    return Vnf(name, overlay, nft=FIREWALL) if i == 2 else Vnf(name, overlay)


topology = linear_chain(3, "udp", name="firewall", vnf=_vnf)
traffic = [
    Ping(),
    Ping(size="mtu"),
    Udp(5000, size=120),
    Udp(53, size=80, expect="dropped at vnf2"),
    Tcp(22),
    Tcp(23, expect="dropped at vnf2"),
]
