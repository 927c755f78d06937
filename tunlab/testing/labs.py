"""Build labs for tests and take them down whatever the test did, then check nothing was left behind.

A :class:`LabFactory` belongs to one artefact folder (a test's, or a module's for shared labs). Each lab it
builds gets a pcap of every underlay link and every TUN (the capture `tunlab run` uses, with its names:
``pcaps/link_<link>.pcap``, ``pcaps/tun_<node>.pcapng``, spooled to disk for the test's life) and writes its results (relay
logs, counters) into that folder; ``close()`` stops the captures, tears the labs down in reverse order and
returns what leaked, as text for a loud teardown error.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

from tunlab.testing import leaks

if TYPE_CHECKING:
    import os

    from tunlab.traffic.capture import Capture

    from tunlab.lab.lab import Lab
    from tunlab.model.topology import Topology

#: a Topology, a function returning one, or a shipped topology's name or a file's path
TopologySpec = Union["Topology", Callable[..., "Topology"], str, "os.PathLike[str]"]


def resolve_topology(spec: TopologySpec, params: dict[str, Any] | None = None) -> Topology:
    """Turn what a test gave (a Topology, a function returning one, or a name/path) into a Topology."""
    from tunlab.model.topofile import resolve_topology as resolve

    return resolve(spec, params, source="tunlab_topology")


@dataclass
class _Running:
    lab: Any
    recorded: leaks.Recorded
    captures: list[Capture] = field(default_factory=list)


def _recorded(lab: Any) -> leaks.Recorded:
    """What the lab's ledger says it created (namespaces, root-namespace links, processes)."""
    rec = leaks.Recorded(run_id=str(lab.run_id))
    for entry in lab.ledger.entries():
        op = entry.get("op")
        if op == "netns" and entry.get("name"):
            rec.namespaces.add(str(entry["name"]))
        elif op == "link" and entry.get("ifname") and not entry.get("netns"):
            rec.links.add(str(entry["ifname"]))
        elif op == "proc" and isinstance(entry.get("pid"), int):
            start = entry.get("start")
            rec.pids[entry["pid"]] = start if isinstance(start, int) else None
    return rec


def _refresh(running: _Running) -> leaks.Recorded:
    """Re-read the ledger just before teardown: the test may have started processes (node.popen)."""
    try:
        return _recorded(running.lab)
    except Exception:  # noqa: BLE001 - a lab that is already down keeps what was read at bring-up
        return running.recorded


class LabFactory:
    """``factory(topology, **lab_kwargs) -> Lab``: up and ready, with its links captured."""

    def __init__(self, *, backend: str, results_dir: Path, capture: bool = True, hosts: Path | None = None) -> None:
        self.backend = backend
        #: --tunlab-hosts: labs across the inventory's hosts (their captures are taken on the hosts by the
        #: checks, so no spooled capture here)
        self.hosts = hosts
        self.results_dir = results_dir
        self.capture = capture
        self._running: list[_Running] = []

    @property
    def labs(self) -> list[Lab]:
        return [r.lab for r in self._running]

    def __call__(self, topology: TopologySpec, *, params: dict[str, Any] | None = None,
                 capture: bool | None = None, **lab_kwargs: Any) -> Lab:
        """Build a lab from ``topology`` (``params`` for a topology given by name), wait until it is up."""
        from tunlab.lab.lab import Lab  # the lab (pyroute2, relays) is imported only when a test builds one

        from tunlab.errors import TunlabError

        lab_kwargs.setdefault("backend", self.backend)
        lab_kwargs.setdefault("results_dir", self.results_dir)
        topo = None
        failure = None
        try:
            topo = resolve_topology(topology, params)
            if self.hosts is not None:
                from tunlab.lab.multihost import MultiHostLab
                from tunlab.model.hosts import load_inventory

                lab = MultiHostLab(topo, load_inventory(self.hosts))  # type: ignore[assignment]
                capture = False
            else:
                lab = Lab(topo, **lab_kwargs)
            lab.__enter__()  # a lab that fails to come up tears itself down and raises
        except TunlabError as exc:  # one line naming the topology's file, not a traceback through the plugin
            source = getattr(topo, "source", None) or getattr(topo, "name", None)
            where = f"{source}: " if source and str(source) not in str(exc) else ""
            failure = f"tunlab: {where}lab did not come up: {exc}"
        if failure is not None:
            import pytest

            pytest.fail(failure, pytrace=False)
        running = _Running(lab, _recorded(lab))
        self._running.append(running)
        if self.capture if capture is None else capture:
            running.captures = [self._start_capture(lab, first=len(self._running) == 1)]
        return lab

    def _start_capture(self, lab: Any, *, first: bool) -> Capture:
        """Every TUN and underlay link of ``lab`` (the points and names of `tunlab run`), spooled into
        ``pcaps/`` (a second lab of the same test into ``pcaps/<run id>/``); returns once every socket listens."""
        from tunlab.run.runner import capture_points
        from tunlab.traffic.capture import Capture

        folder = self.results_dir / "pcaps" if first else self.results_dir / "pcaps" / str(lab.run_id)
        cap = Capture(capture_points(lab), spool=folder)
        cap.__enter__()  # raises TunlabError naming the point; close() still takes the lab down
        return cap

    def snapshot(self) -> None:
        """Copy every running lab's relay logs and counters into the results folder now (at a failure, while
        the lab is still up); teardown copies the final ones over them."""
        from tunlab.lab.lab import keep_results

        for running in self._running:
            try:
                keep_results(Path(running.lab.run_dir), self.results_dir / str(running.lab.run_id))
            except Exception:  # noqa: BLE001 - evidence is best effort; the failure itself is reported anyway
                pass

    def close(self) -> list[str]:
        """Tear every lab down (newest first) and return the problems: teardown errors and leftovers."""
        problems: list[str] = []
        while self._running:
            running = self._running.pop()
            for cap in running.captures:
                cap.__exit__(None, None, None)
            running.recorded = _refresh(running)
            try:
                running.lab.__exit__(None, None, None)
            except Exception as exc:  # keep going: the other labs must come down too
                problems.append(f"tunlab lab {running.recorded.run_id} teardown failed: {exc}")
            for err in getattr(running.lab, "teardown_errors", None) or []:
                problems.append(f"tunlab lab {running.recorded.run_id} teardown: {err}")
            found = leaks.leftovers(running.recorded)
            if found:
                problems.append(leaks.leak_message(running.recorded, found))
        return problems


def copy_into(src: Path, dest: Path) -> None:
    """Copy a lab's run files (logs, counters) into an artefact folder; quiet if there is nothing."""
    if src.is_dir():
        shutil.copytree(src, dest, dirs_exist_ok=True)
