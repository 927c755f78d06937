"""The relay: a TUN/TAP device linked to peers over UDP (one packet per datagram) or TCP (2-byte length
framing). ``tunlab relay`` is the command line; from Python::

    from tunlab.relay import Relay, RelayConfig, PeerSpec, query_stats
    cfg = RelayConfig(dev="t0", addr="10.0.0.1/24", listen=("10.1.0.1", 5000),
                      peers=(PeerSpec("b", "10.1.0.2", 5000, outgoing=True),))
    Relay(cfg).run(control="/tmp/t0.sock")     # until .stop() or SIGTERM
"""

from .config import PeerSpec, RelayConfig, RouteSpec
from .control import control_request, query_stats, register_command
from .engine import Relay, serve

__all__ = ["PeerSpec", "Relay", "RelayConfig", "RouteSpec", "control_request", "query_stats", "register_command", "serve"]
