"""A TCP-transport chain: sender -> vnf1 -> vnf2 -> vnf3 -> receiver, relays framing packets over TCP.

The underlay captures are reassembled per connection and de-framed with the relay's own de-framer, so
every inner packet is checked on every link whatever the TCP segment boundaries.
"""

from tunlab import Ping, Tcp, Udp

topology = "linear"
params = {"n_vnfs": 3, "transport": "tcp"}
traffic = [
    Ping(count=3),
    Ping(size="mtu", count=2),
    Udp(5000, size="mtu"),
    Tcp(22),
]
