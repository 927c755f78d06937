"""The three-VNF chain: sender - vnf1 - vnf2 - vnf3 - receiver.

vnf2 counts what it forwards with an nftables rule (`tunlab exec vnf2 -- nft list ruleset` shows it);
vnf3 drops traffic for 172.16.9.0/24 with a blackhole route (the path carries that prefix toward the receiver,
so `Udp(5000, dst="172.16.9.1", expect="dropped at vnf3")` checks the blackhole). Parameters: transport (udp or tcp),
datapath (auto, plain, gso or simple: the UDP relays' --datapath).
"""

from tunlab import Route, Topology, Vnf, linear_chain

COUNT_FORWARDED = """
table inet tunlab {
    chain forward {
        type filter hook forward priority 0; policy accept;
        counter
    }
}
"""


def _vnf(i: int, name: str, overlay: str) -> Vnf:
    if i == 2:
        return Vnf(name, overlay, nft=COUNT_FORWARDED)
    if i == 3:
        return Vnf(name, overlay, routes=(Route("172.16.9.0/24", "blackhole"),))
    return Vnf(name, overlay)


def topology(transport: str = "udp", datapath: str = "auto") -> Topology:
    return linear_chain(3, transport, name="three_vnf", vnf=_vnf, datapath=datapath,  # type: ignore[arg-type]
                        prefixes=("172.16.9.0/24",))
