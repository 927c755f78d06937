"""Build labs for tests and take them down whatever the test did, then check nothing was left behind.

A :class:`LabFactory` belongs to one artefact folder (a test's, or a module's for shared labs). Each lab it
builds gets a pcap of every underlay link (tcpdump in the nodes' namespaces) and writes its results (relay
logs, counters) into that folder; ``close()`` stops the captures, tears the labs down in reverse order and
returns what leaked, as text for a loud teardown error.
"""

from __future__ import annotations

import importlib
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunlab.errors import TunlabError
from tunlab.testing import captures, leaks

TopologySpec = Any  # a tunlab.model.Topology, a callable returning one, or a name/path under topologies/


def resolve_topology(spec: TopologySpec, params: dict[str, Any] | None = None) -> Any:
    """Turn what a test gave (a Topology, a function returning one, or a name/path) into a Topology."""
    if isinstance(spec, (str, Path)):
        from tunlab.model import load_topology

        return load_topology(str(spec), params)
    if params:
        raise TunlabError("tunlab_topology(params=...) only applies to a topology given by name or path",
                          "call your topology function with its arguments instead")
    if callable(spec) and not hasattr(spec, "nodes"):
        return spec()
    return spec


@dataclass
class _Running:
    lab: Any
    recorded: leaks.Recorded
    captures: list[captures.Capture] = field(default_factory=list)


def _recorded(lab: Any) -> leaks.Recorded:
    """What the lab's ledger says it created (namespaces, root-namespace links, processes)."""
    from tunlab.ledger import Ledger

    rec = leaks.Recorded(run_id=str(lab.run_id))
    for entry in Ledger(Path(lab.run_dir)).entries():
        op = entry.get("op")
        if op == "netns" and entry.get("name"):
            rec.namespaces.add(str(entry["name"]))
        elif op == "link" and entry.get("ifname") and not entry.get("netns"):
            rec.links.add(str(entry["ifname"]))
        elif op == "proc" and isinstance(entry.get("pid"), int):
            start = entry.get("start")
            rec.pids[entry["pid"]] = start if isinstance(start, int) else None
    return rec


class LabFactory:
    """``factory(topology, **lab_kwargs) -> Lab``: up and ready, with its links captured."""

    def __init__(self, *, backend: str, results_dir: Path, capture: bool = True) -> None:
        self.backend = backend
        self.results_dir = results_dir
        self.capture = capture
        self._running: list[_Running] = []

    @property
    def labs(self) -> list[Any]:
        return [r.lab for r in self._running]

    def __call__(self, topology: TopologySpec, *, params: dict[str, Any] | None = None,
                 capture: bool | None = None, **lab_kwargs: Any) -> Any:
        """Build a lab from ``topology`` (``params`` for a topology given by name), wait until it is up."""
        from tunlab.lab import Lab  # the lab (pyroute2, relays) is imported only when a test builds one

        lab_kwargs.setdefault("backend", self.backend)
        lab_kwargs.setdefault("results_dir", self.results_dir)
        lab = Lab(resolve_topology(topology, params), **lab_kwargs)
        lab.__enter__()  # a lab that fails to come up tears itself down and raises
        running = _Running(lab, _recorded(lab))
        self._running.append(running)
        if self.capture if capture is None else capture:
            running.captures = captures.start(self._capture_targets(lab))
        return lab

    def _capture_targets(self, lab: Any) -> list[tuple[str, Callable[..., Any], str, Path]]:
        folder = self.results_dir / "pcaps"
        targets = []
        for link in lab.underlay_links:
            node_name, iface = link.a[0], link.a[1]
            node = lab.node(node_name)
            targets.append((str(link.name), node.popen, str(iface), folder / f"{link.name}.pcap"))
        return targets

    def close(self) -> list[str]:
        """Tear every lab down (newest first) and return the problems: teardown errors and leftovers."""
        problems: list[str] = []
        while self._running:
            running = self._running.pop()
            captures.stop(running.captures)
            try:
                running.lab.__exit__(None, None, None)
            except Exception as exc:  # keep going: the other labs must come down too
                problems.append(f"tunlab lab {running.recorded.run_id} teardown failed: {exc}")
            found = leaks.leftovers(running.recorded)
            if found:
                problems.append(leaks.leak_message(running.recorded, found))
        return problems


def copy_into(src: Path, dest: Path) -> None:
    """Copy a lab's run files (logs, counters) into an artefact folder; quiet if there is nothing."""
    if src.is_dir():
        shutil.copytree(src, dest, dirs_exist_ok=True)
