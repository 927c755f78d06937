"""Mininet as a lab backend, and tunlab relays inside a Mininet network of your own.

- :mod:`.backend`: ``MininetBackend`` (``Lab(topology, backend="mininet")``, ``tunlab run --backend mininet``);
- :mod:`.nodes`: the Mininet node classes it uses (``QuietMininet``, ``NsBridge``, ...; importing it
  imports Mininet);
- :mod:`.api`: ``add_relay_chain(net, hosts)`` for an existing Mininet network (``tunlab.add_relay_chain``);
- :mod:`.proc`, :mod:`.support`: processes in Mininet hosts; whether Mininet is installed, and the
  one-line message when it is not.

This package is the only place that imports ``mininet``, and only when one of these is used.
"""
