"""The lab: a topology brought up on a backend, its relays started and supervised, and all of it taken
down again by ownership.

- :mod:`.lab`: ``Lab`` (context manager), ``Node``, ``teardown_run`` (``tunlab down``/``clean``);
- :mod:`.ledger`: the run directory and ownership ledger (``/run/tunlab/<id>``);
- :mod:`.relays`: starting every relay at once, readiness, "connected", counters;
- :mod:`.relayfork`: the fork server that starts relays cheaply;
- :mod:`.backends`: what makes nodes and links (``netns`` with pyroute2; ``mininet/``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tunlab.lab.lab import Lab, Node, keep_results, teardown_run

__all__ = ["Lab", "Node", "keep_results", "teardown_run"]


def __getattr__(name: str) -> Any:  # the lab's modules are imported on first use
    if name in __all__:
        from tunlab.lab import lab

        return getattr(lab, name)
    raise AttributeError(f"module 'tunlab.lab' has no attribute {name!r}")
