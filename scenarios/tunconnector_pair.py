"""Two hosts joined by a relay, as in TunConnector's example, pinged end to end over UDP and over TCP.

TunConnector's addresses (client 192.168.0.2, server 192.168.1.2, port 55555): one client/server pair
whose relays speak UDP and one whose relays speak TCP (the server listens, the client connects), in one lab.
"""

from tunlab import Endpoint, Link, Path, Ping, Topology

topology = Topology(
    name="tunconnector_pair",
    description="TunConnector's two-host example, once over UDP and once over TCP",
    overlay_net="192.168.0.0/16",
    endpoints=(
        Endpoint("client", "192.168.0.2"),
        Endpoint("server", "192.168.1.2"),
        Endpoint("tcp_client", "192.168.0.3"),
        Endpoint("tcp_server", "192.168.1.3"),
    ),
    vnfs=(),
    links=(
        Link("client", "server", "10.0.0.1/30", "10.0.0.2/30", "udp", 55555, 55555),
        Link("tcp_client", "tcp_server", "10.0.0.5/30", "10.0.0.6/30", "tcp", 55555, 55555),
    ),
    paths=(Path(("client", "server")), Path(("tcp_client", "tcp_server"))),
)
traffic = [
    Ping(count=2),
    Ping(size="mtu"),
    Ping(src="tcp_client", dst="tcp_server", count=2),
    Ping(src="tcp_client", dst="tcp_server", size="mtu"),
]
