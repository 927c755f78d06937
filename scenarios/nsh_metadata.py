"""NSH metadata between service functions (issue 18): vnf1 is an NSH-aware SF that stamps the context
(tunlab.traffic.nsh_sf:stamp), vnf2 a kernel VNF behind the relay's NSH proxy (it never sees NSH; its
nftables counter proves the packets went through it), vnf3 an NSH-aware SF that drops what carries no stamp
and notes that it read it. The context each aware SF writes is declared (nsh_context), so every later hop
is checked for exactly that metadata, both ways.
"""

from tunlab import Ping, ServicePath, Udp, Vnf, linear_chain

COUNT = """
table inet tunlab_count {
    chain forward {
        type filter hook forward priority 0; policy accept;
        counter
    }
}
"""
CLASSIFIED = "00" * 12 + "00000007"             # the classifier's word 3
STAMPED = "53463100" + "00" * 8 + "00000007"    # vnf1: b"SF1\0" in word 0
READ = "53463100" + "4f4b3100" + "00" * 4 + "00000007"  # vnf3: b"OK1\0" in word 1 after reading the stamp


def _vnf(i: int, name: str, overlay: str) -> Vnf:
    if i == 1:
        return Vnf(name, overlay, nsh_hook="tunlab.traffic.nsh_sf:stamp", nsh_context=STAMPED)
    if i == 3:
        return Vnf(name, overlay, nsh_hook="tunlab.traffic.nsh_sf:require_stamp", nsh_context=READ)
    return Vnf(name, overlay, nft=COUNT)


topology = linear_chain(3, "udp", name="nsh_metadata", port=4790, vnf=_vnf, service_paths=(
    ServicePath(30, ("sender", "vnf1", "vnf2", "vnf3", "receiver"), si=10, context=CLASSIFIED, reverse_spi=0),
    ServicePath(40, ("receiver", "vnf3", "vnf2", "vnf1", "sender"), si=10, skip=("vnf3",), context=CLASSIFIED,
                reverse_spi=0),
))
traffic = [Ping(), Ping(size="mtu"), Udp(7000, size=200)]
