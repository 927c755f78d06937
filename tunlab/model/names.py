"""Run ids and the names a run gives to what it creates.

A run id is 4 base-36 characters starting with a letter (1.2 million ids); it is reserved by creating the
run directory (``mkdir`` is atomic), so two runs never share one. Every name carries the id:

- namespace ``tl-<id>-<node>`` (a file in /run/netns; not limited to 15 characters)
- TUN device ``tun-<id>`` (one per node, inside the node's namespace)
- veth end ``ve-<id>-<link><a|b>`` (link number in the topology, side a or b)

Interface names fit the kernel's 15-character limit (IFNAMSIZ - 1); :func:`check_ifname` enforces it.
"""

from __future__ import annotations

import re
import secrets
import string

from tunlab.relay.config import check_ifname as relay_check_ifname

IFNAMSIZ = 16
_ALPHABET = string.digits + string.ascii_lowercase
_RUN_ID_RE = re.compile(r"^[a-z][a-z0-9]{3}$")
NETNS_PREFIX = "tl-"


def new_run_id() -> str:
    return secrets.choice(string.ascii_lowercase) + "".join(secrets.choice(_ALPHABET) for _ in range(3))


def is_run_id(text: str) -> bool:
    return bool(_RUN_ID_RE.match(text))


def check_ifname(name: str) -> str:
    """The relay's rule (:func:`tunlab.relay.config.check_ifname`): one rule for every interface name."""
    return relay_check_ifname(name, "interface name")


def netns_name(run_id: str, node: str) -> str:
    return f"{NETNS_PREFIX}{run_id}-{node}"


def tun_name(run_id: str) -> str:
    return check_ifname(f"tun-{run_id}")


def veth_name(run_id: str, link_index: int, side: str) -> str:
    if side not in ("a", "b"):
        raise ValueError(side)
    return check_ifname(f"ve-{run_id}-{link_index}{side}")


def owned_by(run_id: str, name: str) -> bool:
    """Does ``name`` (a namespace or interface name) carry ``run_id`` as this module writes it?"""
    return name.startswith((f"{NETNS_PREFIX}{run_id}-", f"ve-{run_id}-")) or name == f"tun-{run_id}"
