"""A straight chain: sender - vnf1 - ... - vnfN - receiver, every VNF forwarding through its kernel.

Parameters: n_vnfs (default 3), transport (udp or tcp).  `tunlab show linear -p n_vnfs=10`
"""

from tunlab.model import Topology, linear_chain


def topology(n_vnfs: int = 3, transport: str = "udp") -> Topology:
    return linear_chain(n_vnfs, transport)  # type: ignore[arg-type]
