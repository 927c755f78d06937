"""The headline: sender -> vnf1 -> vnf2 -> vnf3 -> receiver over UDP, every VNF forwarding in its kernel.

Pings (small and of the full overlay MTU), a UDP datagram and TCP segments cross the chain; each must
arrive intact with its TTL lowered once per VNF, be encapsulated once on every link, and be answered.
"""

from tunlab import Ping, Tcp, Udp

topology = "three_vnf"
params = {"transport": "udp"}
traffic = [
    Ping(),
    Ping(size="mtu"),
    Udp(5000, size=200),
    Tcp(80),
    Tcp(80, "PA", payload=b"GET / HTTP/1.0\r\n\r\n"),
]
