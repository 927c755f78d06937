"""A NAT VNF: vnf2 rewrites the sender's address (and UDP/TCP source port) with nftables SNAT; the receiver
answers vnf2's address and vnf2 undoes the rewrite on the way back.

The rewrite is declared (``rewrites``), so every probe is still followed hop by hop through vnf2 -- by the
fields the NAT leaves alone -- with the declared fields not compared after it, and any other change failing.
Without the declaration the same run fails at "vnf2 TUN out" showing EXPECTED/RECEIVED.
"""

from tunlab import Ping, Tcp, Udp, Vnf, linear_chain

SNAT = """
table ip tunlab_nat {
    chain postrouting {
        type nat hook postrouting priority srcnat; policy accept;
        ip saddr 172.16.0.1 ip daddr 172.16.0.2 meta l4proto { tcp, udp } snat to 172.16.1.2:40000-40999
        ip saddr 172.16.0.1 ip daddr 172.16.0.2 snat to 172.16.1.2
    }
}
"""


def _vnf(i: int, name: str, overlay: str) -> Vnf:
    return Vnf(name, overlay, nft=SNAT) if i == 2 else Vnf(name, overlay)  # vnf2 is 172.16.1.2


topology = linear_chain(3, "udp", name="nat", vnf=_vnf)
rewrites = {"vnf2": ["IP.src", "UDP.sport", "TCP.sport"]}
traffic = [
    Ping(),
    Ping(size="mtu"),
    Udp(5000, expect="reply"),            # ICMP port unreachable to vnf2's address, its quote de-NATed too
    Udp(5001, size=400, expect="reply"),
    Tcp(80),                              # RST-ACKs back through the NAT
    Tcp(81),
    Tcp(80, flags="PA", payload=b"hi"),
]
