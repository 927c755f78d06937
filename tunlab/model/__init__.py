"""The description of a lab and of what to send through it: pure, no root, no scapy at import.

- :mod:`.topology`: ``Topology`` and its parts (``Endpoint``, ``Vnf``, ``Link``, ``Path``, ``Route``),
  ``linear_chain``; every object validates itself and names the file, node or link, field and fix;
- :mod:`.shaping`: link shaping options (``Link(shaping=...)``);
- :mod:`.topofile`: topology files, names under ``topologies/``, ``-p NAME=VALUE``; ``resolve_topology``
  is the one way a topology is named (a Topology, a function, a name or a path);
- :mod:`.flows`: ``Ping``/``Udp``/``Tcp``, ``Expect``, ``Probe``;
- :mod:`.scenario`: scenario files (``load_scenario``) and the probes they send (``build_probes``);
- :mod:`.names`: run ids and interface names (15 characters at most);
- :mod:`.plan`: from a description and a run id to every name, address and relay command line.
"""

from tunlab.model.flows import Expect, Flow, Ping, Probe, Tcp, Udp
from tunlab.model.scenario import Scenario, load_scenario
from tunlab.model.topofile import load_topology, parse_params, resolve_topology
from tunlab.model.topology import Endpoint, Link, Path, Route, Topology, TopologyError, Vnf, linear_chain

__all__ = ["Endpoint", "Expect", "Flow", "Link", "Path", "Ping", "Probe", "Route", "Scenario", "Tcp", "Topology",
           "TopologyError", "Udp", "Vnf", "linear_chain", "load_scenario", "load_topology", "parse_params",
           "resolve_topology"]
