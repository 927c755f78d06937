"""NSH-unaware VNFs behind the relay's NSH proxy (issue 18): vnf1 is a plain Python hook
(tunlab.traffic.faults:passthrough, bytes in, bytes out, no NSH) and vnf2 a kernel firewall (nftables drops
telnet). The proxy strips NSH, hands them the inner packet and re-applies the header with the SI taken down
by one to what comes back; the checks follow SPI/SI/TTL/metadata on every hop, both ways.
"""

from tunlab import Ping, ServicePath, Tcp, Vnf, linear_chain

FIREWALL = """
table inet tunlab_fw {
    chain forward {
        type filter hook forward priority 0; policy accept;
        tcp dport 23 counter drop
    }
}
"""


def _vnf(i: int, name: str, overlay: str) -> Vnf:
    if i == 1:
        return Vnf(name, overlay, kind="hook", hook="tunlab.traffic.faults:passthrough")
    return Vnf(name, overlay, nft=FIREWALL)


topology = linear_chain(2, "udp", name="nsh_proxy", port=4790, vnf=_vnf, service_paths=(
    ServicePath(50, ("sender", "vnf1", "vnf2", "receiver"), si=200, tlvs=("0xfff0:1:00000001",)),
))
traffic = [Ping(), Ping(size="mtu"), Tcp(22), Tcp(23, expect="dropped at vnf2")]
