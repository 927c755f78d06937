"""Backends make the nodes and links of a lab: ``netns`` (default, pyroute2) and ``mininet``.

See :mod:`tunlab.lab.backends.base` for the interface. Backends are imported on use.
"""

from __future__ import annotations

import importlib

from tunlab.errors import TunlabError

BACKENDS = {
    "netns": "tunlab.lab.backends.netns:NetnsBackend",
    "mininet": "tunlab.lab.backends.mininet.backend:MininetBackend",
    # labs across hosts (docs/multihost.md): a host's part, and the controller's record of the hosts
    "hostpart": "tunlab.lab.backends.hostpart:HostPartBackend",
    "hosts": "tunlab.lab.multihost:HostsRecord",
}


def backend_class(name: str) -> type:
    spec = BACKENDS.get(name)
    if spec is None:
        raise TunlabError(f"there is no backend '{name}'", f"use one of: {', '.join(BACKENDS)}")
    mod_name, attr = spec.split(":")
    try:
        mod = importlib.import_module(mod_name)
    except ImportError as exc:
        raise TunlabError(f"the '{name}' backend is unavailable: {exc}") from exc
    cls: type = getattr(mod, attr)
    return cls
