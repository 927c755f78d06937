"""Traffic: packets into and out of a running lab's namespaces.

- :mod:`.inject`: a raw socket in the sender's namespace, so probes leave through its TUN and relay;
- :mod:`.capture`: AF_PACKET sniffers opened inside namespaces (``Capture``, ``CapturePoint``), bound
  before anything is sent;
- :mod:`.decap`: what an underlay frame carries (UDP datagrams, TCP streams cut with the relay's own
  de-framer, the fast datapath's chunks): the place a new encapsulation is taught to the checks;
- :mod:`.faults`: relay hooks that break a chain on purpose (negative tests).

Knows namespaces by their file (``/run/netns/NAME``, ``/proc/PID/ns/net``), not labs.
"""
