"""A chain that forks: the classifier sends 172.16.1.0/24 through fw_a to rx_a and 172.16.2.0/24 through
fw_b to rx_b (its relay chooses the next hop by destination prefix).

    sender - classifier - fw_a - rx_a
                     \\- fw_b - rx_b

Parameters: transport (udp or tcp), datapath (auto, plain, gso, simple).
"""

from tunlab import Endpoint, Link, Path, Topology, Vnf


def topology(transport: str = "udp", datapath: str = "auto") -> Topology:
    return Topology(
        name="fork",
        datapath=datapath,
        description="one classifier VNF choosing between two branches by destination prefix",
        endpoints=(
            Endpoint("sender", "172.16.0.1"),
            Endpoint("rx_a", "172.16.1.2"),
            Endpoint("rx_b", "172.16.2.2"),
        ),
        vnfs=(
            Vnf("classifier", "172.16.0.10"),
            Vnf("fw_a", "172.16.1.1"),
            Vnf("fw_b", "172.16.2.1"),
        ),
        links=(
            Link("sender", "classifier", "10.0.0.1/30", "10.0.0.2/30", transport),  # type: ignore[arg-type]
            Link("classifier", "fw_a", "10.0.1.1/30", "10.0.1.2/30", transport),  # type: ignore[arg-type]
            Link("fw_a", "rx_a", "10.0.1.5/30", "10.0.1.6/30", transport),  # type: ignore[arg-type]
            Link("classifier", "fw_b", "10.0.2.1/30", "10.0.2.2/30", transport),  # type: ignore[arg-type]
            Link("fw_b", "rx_b", "10.0.2.5/30", "10.0.2.6/30", transport),  # type: ignore[arg-type]
        ),
        paths=(
            Path(("sender", "classifier", "fw_a", "rx_a"), prefixes=("172.16.1.0/24",)),
            Path(("sender", "classifier", "fw_b", "rx_b"), prefixes=("172.16.2.0/24",)),
        ),
    )
