"""A straight chain: sender - vnf1 - ... - vnfN - receiver, every VNF forwarding through its kernel.

Parameters: n_vnfs (default 3), transport (udp or tcp), datapath (auto, plain, gso, simple).  `tunlab show linear -p n_vnfs=10`
"""

from tunlab import Topology, linear_chain


def topology(n_vnfs: int = 3, transport: str = "udp", datapath: str = "auto") -> Topology:
    return linear_chain(n_vnfs, transport, datapath=datapath)  # type: ignore[arg-type]
