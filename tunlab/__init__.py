"""tunlab: network-namespace / Mininet labs for VNF chains, with a TUN<->UDP/TCP relay at its core.

The front door: everything a user script, scenario file, topology file or test needs is importable from
here (``from tunlab import Lab, linear_chain, Ping``). Names are loaded on first use, so ``import tunlab``
stays cheap (the relay imports nothing but :mod:`tunlab.errors` and :mod:`tunlab.relay`).

- describe: ``Topology``, ``Endpoint``, ``Vnf``, ``Link``, ``Path``, ``Route``, ``ServicePath``, ``linear_chain``,
  ``load_topology``;
- scenarios: ``Ping``, ``Udp``, ``Tcp``, ``Expect``, ``Scenario``, ``load_scenario``, ``run_scenario``,
  ``ScenarioResult``;
- labs: ``Lab``; Mininet: ``add_relay_chain``, ``QuietMininet``, ``NsBridge`` (these two need Mininet);
- errors: ``TunlabError``, ``DescriptionError``, ``TopologyError``, ``NeedRoot``.

The relay's own API is :mod:`tunlab.relay` (``Relay``, ``RelayConfig``, ``PeerSpec``, ``query_stats``).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from tunlab.errors import DescriptionError, NeedRoot, TunlabError

__version__ = "0.1.0"

# public name -> the module that defines it (imported when the name is first used)
_LAZY: dict[str, str] = {
    "Endpoint": "tunlab.model.topology",
    "Link": "tunlab.model.topology",
    "Path": "tunlab.model.topology",
    "Route": "tunlab.model.topology",
    "Topology": "tunlab.model.topology",
    "TopologyError": "tunlab.model.topology",
    "Vnf": "tunlab.model.topology",
    "ServicePath": "tunlab.model.nsh",
    "linear_chain": "tunlab.model.topology",
    "load_topology": "tunlab.model.topofile",
    "Expect": "tunlab.model.flows",
    "Ping": "tunlab.model.flows",
    "Tcp": "tunlab.model.flows",
    "Udp": "tunlab.model.flows",
    "Scenario": "tunlab.model.scenario",
    "load_scenario": "tunlab.model.scenario",
    "Lab": "tunlab.lab.lab",
    "run_scenario": "tunlab.run.runner",
    "ScenarioResult": "tunlab.verdict.checks",
    "add_relay_chain": "tunlab.lab.backends.mininet.api",
    "NsBridge": "tunlab.lab.backends.mininet.nodes",
    "QuietMininet": "tunlab.lab.backends.mininet.nodes",
}

__all__ = ["DescriptionError", "Endpoint", "Expect", "Lab", "Link", "NeedRoot", "NsBridge", "Path", "Ping",
           "QuietMininet", "Route", "Scenario", "ScenarioResult", "ServicePath", "Tcp", "Topology", "TopologyError",
           "TunlabError", "Udp", "Vnf", "__version__", "add_relay_chain", "linear_chain", "load_scenario",
           "load_topology", "run_scenario"]

if TYPE_CHECKING:
    from tunlab.lab.backends.mininet.api import add_relay_chain
    from tunlab.lab.backends.mininet.nodes import NsBridge, QuietMininet
    from tunlab.lab.lab import Lab
    from tunlab.model.flows import Expect, Ping, Tcp, Udp
    from tunlab.model.nsh import ServicePath
    from tunlab.model.scenario import Scenario, load_scenario
    from tunlab.model.topofile import load_topology
    from tunlab.model.topology import Endpoint, Link, Path, Route, Topology, TopologyError, Vnf, linear_chain
    from tunlab.run.runner import run_scenario
    from tunlab.verdict.checks import ScenarioResult


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'tunlab' has no attribute {name!r}")
    if module.endswith(".nodes"):  # Mininet's own classes: a one-line message when Mininet is missing
        from tunlab.lab.backends.mininet.support import require_mininet

        require_mininet()
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return list(__all__)
