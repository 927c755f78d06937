"""The fast UDP datapath (``--datapath auto|plain|gso``, docs/fastpath.md): whole GSO super-packets carried
in chunks between tunlab relays, one packet per datagram to anyone else.

- :mod:`.udp`: ``FastUdpDatapath``, the datapath the relay's registry loads for auto/plain/gso;
- :mod:`.encap`: the chunk header and hello on the wire (pure; the traffic decoder reads it too);
- :mod:`.pumps`, :mod:`.gro`, :mod:`.sockio`: batched receive/send, GRO-style merging, socket calls;
- :mod:`.scapy_encap`: scapy layers for the wire format (tests and captures; never in the relay's loop).

Imported only when a relay chooses this datapath.
"""
