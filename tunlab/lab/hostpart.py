"""A host's part of a lab across hosts (issue 19): a :class:`tunlab.lab.lab.Lab` whose plan is the host's
share (:func:`tunlab.model.hosts.host_plan`), whose backend adds the uplinks of links that leave the host
(:mod:`tunlab.lab.backends.hostpart`), whose run id and key are the controller's, and which returns once
its relays are ready: the controller waits for every hop connected once every host's relays run.

It keeps its own ledger in the host's run directory (``/run/tunlab/<run id>``, backend ``hostpart``), so
`tunlab clean` and `tunlab down` on the host remove exactly what it made, whatever became of the controller.
"""

from __future__ import annotations

from typing import Any

from tunlab.errors import TunlabError
from tunlab.lab.backends.base import Backend
from tunlab.lab.backends.hostpart import HostPartBackend
from tunlab.lab.lab import Lab
from tunlab.lab.ledger import Ledger
from tunlab.model.hosts import HostPlan, Inventory, host_plan
from tunlab.model.plan import LabPlan
from tunlab.model.topology import Topology


class HostPartLab(Lab):
    def __init__(self, topology: Topology, *, run_id: str, host: str, placement: dict[str, str],
                 inventory: Inventory, key: bytes | None, controller: dict[str, Any],
                 ready_timeout: float | None = None, restart_relays: bool = False) -> None:
        super().__init__(topology, backend="hostpart", ready_timeout=ready_timeout, restart_relays=restart_relays,
                         connect=False)
        self.host = host
        self.placement = dict(placement)
        self.inventory = inventory
        self._run_id = run_id
        self._psk = key
        self._controller = controller
        self.host_plan: HostPlan | None = None

    def _create_ledger(self, meta: dict[str, Any]) -> Ledger:
        return Ledger.create({**meta, "host": self.host, "controller": self._controller,
                              "placement": self.placement}, run_id=self._run_id)

    def _make_plan(self, led: Ledger) -> LabPlan:
        self.host_plan = host_plan(self.topology, led.run_id, str(led.dir), self.placement, self.inventory, self.host)
        return self.host_plan.plan

    def _make_backend(self, cls: Any, plan: LabPlan, led: Ledger) -> Backend:
        assert self.host_plan is not None
        return HostPartBackend(plan, led, self.host_plan.uplinks)

    def wait_connected(self, timeout: float | None = None, links: Any = None) -> None:
        """Every hop of this host's relays connected, and on every link between hosts whose relays send
        hellos (keyed, or the auto/gso datapaths over UDP) a packet from the far host arrived (a UDP relay
        counts its peer as connected as soon as it knows where to send)."""
        super().wait_connected(timeout, links)
        t = self.topology
        hello = t.keyed or t.datapath in ("auto", "gso")
        backend = self.backend
        if self.host_plan is None or not isinstance(backend, HostPartBackend):
            return
        crossing = [u.link for u in self.host_plan.uplinks if u.transport == "udp" and hello]
        if crossing:
            backend.wait_underlay(crossing, 10.0 if timeout is None else timeout, self._relay_drops)

    def _relay_drops(self, node: str) -> str:
        """`` [relay NODE: drops ...]``, for the message of a link that stayed silent."""
        try:
            c = self.relay_counters().get(node) or {}
        except TunlabError:
            return f" [relay {node}: no answer on its control socket]"
        drops = ", ".join(f"{k} {v}" for k, v in sorted((c.get("drops") or {}).items()) if v)
        return f" [relay {node}: drops {drops or 'none'}]"

    def _key(self) -> bytes:
        if self._psk is None:
            raise ValueError("a keyed lab across hosts needs the controller's key")
        return self._psk
