"""Scenario checks on a test's lab: the ``tunlab_checks`` fixture's object.

Two levels, both from ``tunlab.traffic``:

- ``flows([...])`` / ``scenario(...)``: the scenario runner's checks (every hop, delivery, replies, drops,
  encapsulation) on the lab the test already has; flows are the ``Ping``/``Udp``/``Tcp`` of scenario files;
- ``capture(...)``, ``send(...)``, ``expect(...)``, ``expect_none(...)``: PTF-style building blocks.

A failed check raises :class:`ChecksFailed` whose message is the report (EXPECTED and the nearest RECEIVED
decoded the same way); the report and the pcaps of that check are written to the test's artefact folder.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tunlab.errors import TunlabError
from tunlab.system.privileges import make_user_dir, write_user_file

MAX_NEAREST = 3


class ChecksFailed(AssertionError):
    """Checks on a lab failed; the message is the report, the evidence is in ``folder``.

    Its first line, ``verdict``, says what failed in one line (what ``pytest -ra`` and CI summaries show)."""

    def __init__(self, report: str, folder: Path | None = None, *, name_folder: bool = True) -> None:
        super().__init__(report + (f"\n(evidence: {folder})" if folder and name_folder else ""))
        self.report = report
        self.folder = folder
        self.verdict = report.strip().splitlines()[0] if report.strip() else "tunlab checks failed"


DEFAULT_WIDTH = 120


def render_text(result: Any, width: int = 120) -> str:
    """A scenario result as plain text (the same report ``tunlab run`` prints)."""
    from tunlab.verdict.report import render_text as _render_text

    return _render_text(result, width)


class LabChecks:
    """Send, capture and expect on one running lab; evidence of failures goes under ``folder/checks``."""

    def __init__(self, lab: Any, folder: Path, name: str = "checks", *, width: int = DEFAULT_WIDTH) -> None:
        self.lab = lab
        self.folder = folder
        self.width = width  # of the failure report: the terminal's (the plugin passes pytest's)
        self.name = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-") or "checks"
        self._seq = itertools.count(1)
        self.results: list[Any] = []
        self.captures: list[Any] = []   # every capture() of the test, written out if the test fails

    # ------------------------------------------------------------------ whole-chain checks (scenario runner)

    def flows(self, traffic: Sequence[Any], *, expect: str | None = None, src: str | None = None,
              dst: str | None = None, timeout: float = 5.0, settle: float = 0.3, seed: int | None = None,
              raises: bool = True) -> Any:
        """Send ``traffic`` (Ping/Udp/Tcp from tunlab.model.scenario) through the lab and check every hop."""
        __tracebackhide__ = True
        from tunlab.model.scenario import Scenario

        first = self.lab.topology.paths[0].nodes
        sc = Scenario(name=self.name, source=self.name, topology=self.lab.topology, traffic=tuple(traffic),
                      expect=expect, src=src or first[0], dst=dst or first[-1], timeout=timeout, settle=settle)
        return self.scenario(sc, seed=seed, raises=raises)

    def scenario(self, scenario: Any, *, seed: int | None = None, before_send: Any = None,
                 raises: bool = True) -> Any:
        """Run a scenario (a loaded Scenario or a scenario file's path) on this lab; returns its result.

        The checks and the evidence of a failure are those of ``tunlab run`` (:mod:`tunlab.run.runner`),
        written under this test's artefact folder."""
        __tracebackhide__ = True
        from tunlab.model.scenario import Scenario, load_scenario
        from tunlab.run.runner import check_scenario

        sc: Scenario = scenario if isinstance(scenario, Scenario) else load_scenario(scenario)
        result = check_scenario(sc, self.lab, seed=seed, before_send=before_send,
                                evidence=lambda: self._evidence(sc.name))
        self.results.append(result)
        if not result.passed and raises:
            from tunlab.verdict.report import verdict_line

            verdict = str(verdict_line(result)).replace(f" — results in {result.results_dir}", "")
            raise ChecksFailed(f"{verdict}\n{render_text(result, self.width)}", Path(str(result.results_dir)),
                               name_folder=False)
        return result

    # ------------------------------------------------------------------ building blocks (PTF vocabulary)

    def point(self, where: str, bpf: str = "ip") -> Any:
        """A capture point: a node name (its TUN device) or an underlay link name (its far end)."""
        from tunlab.traffic.capture import CapturePoint

        links = {lk.name: lk for lk in self.lab.underlay_links}
        if where in links:
            lk = links[where]
            return CapturePoint(where, self.lab.node(lk.b.node).netns_file, lk.b.ifname, bpf)
        try:
            node = self.lab.node(where)
        except Exception as exc:  # noqa: BLE001 - the lab names what it does not know
            raise TunlabError(f"no node or link named {where!r} in this lab",
                              f"nodes: {', '.join(n.name for n in self.lab.topology.nodes)}; "
                              f"links: {', '.join(links)}") from exc
        return CapturePoint(where, node.netns_file, node.overlay_dev, bpf)

    @contextmanager
    def capture(self, *where: str, bpf: str = "ip") -> Iterator[Any]:
        """Listen on the given nodes' TUNs / links (default: every node and link) until the block ends.

        Returns once every socket is bound, so whatever is sent inside the block is seen."""
        from tunlab.traffic.capture import Capture

        names = list(where) or [n.name for n in self.lab.topology.nodes] + \
            [lk.name for lk in self.lab.underlay_links]
        cap = Capture([self.point(w, bpf) for w in names])
        self.captures.append(cap)
        with cap:
            yield cap

    def send(self, packet: Any, src: str) -> float:
        """Send one IPv4 packet (scapy or bytes) from inside node ``src`` (through its kernel and TUN)."""
        from tunlab.traffic.inject import Injector

        with Injector(self.lab.node(src).netns_file, src) as inj:
            return inj.send(bytes(packet))

    def expect(self, cap: Any, at: str, expected: Any, *, timeout: float = 5.0, count: int = 1) -> list[bytes]:
        """Wait until ``count`` packets matching ``expected`` (a Mask, scapy packet or bytes) were seen at ``at``."""
        __tracebackhide__ = True
        mask = _mask(expected)
        ok = cap.wait_for(lambda frames: len(_matching(frames.get(at, ()), mask)) >= count, timeout)
        got = _matching(cap.frames().get(at, ()), mask)
        if ok:
            return got[:count]
        self._fail_packet(cap, at, mask, f"expected {count} matching packet(s) at {at} within {timeout:g} s, "
                                         f"saw {len(got)}")
        return []

    def expect_none(self, cap: Any, at: str, expected: Any, *, settle: float = 0.3, timeout: float = 5.0) -> None:
        """Once every point was quiet for ``settle`` s, no packet matching ``expected`` was seen at ``at``."""
        __tracebackhide__ = True
        mask = _mask(expected)
        cap.wait_quiet(settle, timeout)
        if _matching(cap.frames().get(at, ()), mask):
            self._fail_packet(cap, at, mask, f"expected no matching packet at {at}, but one arrived", show_match=True)

    # ------------------------------------------------------------------ evidence

    def save_captures(self) -> None:
        """Write the pcaps of every capture() block (the fixture calls it when the test failed)."""
        for i, cap in enumerate(self.captures, 1):
            if cap.frames():
                cap.write_pcaps(make_user_dir(self.folder / "checks" / f"capture-{i:02d}"))

    def _evidence(self, label: str) -> Path:
        n = next(self._seq)
        return make_user_dir(self.folder / "checks" / f"{n:02d}-{re.sub(r'[^A-Za-z0-9_.-]+', '-', label)}")

    def _fail_packet(self, cap: Any, at: str, mask: Any, message: str, *, show_match: bool = False) -> None:
        __tracebackhide__ = True
        from tunlab.verdict.masks import decode

        frames = [f.data for f in cap.frames().get(at, ())]
        shown = _matching_frames(frames, mask) if show_match else _nearest(mask, frames)
        lines = [message, "EXPECTED" + (" (ignoring " + ", ".join(mask.ignored) + ")" if mask.ignored else "")]
        lines += ["  " + x for x in decode(mask.expected)]
        for got in shown[:MAX_NEAREST]:
            lines.append("RECEIVED")
            lines += ["  " + x for x in decode(got)]
            if not show_match:
                lines += ["  differs: " + str(d) for d in mask.diff(got)[:4]]
        if not shown:
            lines.append(f"RECEIVED: nothing at {at} ({len(frames)} other packet(s))")
        report = "\n".join(lines)
        folder = self._evidence(f"expect-{at}")
        write_user_file(folder / "expected-received.txt", report + "\n")
        cap.write_pcaps(make_user_dir(folder / "pcaps"))
        raise ChecksFailed(report, folder)


def _mask(expected: Any) -> Any:
    from tunlab.verdict.masks import Mask

    return expected if isinstance(expected, Mask) else Mask(expected)


def _matching(frames: Iterable[Any], mask: Any) -> list[bytes]:
    return [f.data for f in frames if mask.matches(f.data)]


def _matching_frames(frames: Sequence[bytes], mask: Any) -> list[bytes]:
    return [d for d in frames if mask.matches(d)]


def _nearest(mask: Any, frames: Sequence[bytes]) -> list[bytes]:
    """The received packets that differ from the expected one in the fewest fields."""
    scored = []
    for d in frames:
        try:
            scored.append((len(mask.diff(d)), d))
        except Exception:  # noqa: BLE001 - an undecodable frame is as far as it gets
            continue
    return [d for _, d in sorted(scored, key=lambda x: x[0])]
