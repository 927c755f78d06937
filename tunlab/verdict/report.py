"""Reports: a per-hop table per probe and a verdict (rich), one line per scenario, and JUnit XML.

Failures show what a person needs to act: the check and the hop it names, where the packet was last seen,
the EXPECTED packet and the nearest RECEIVED ones decoded the same way (capped), and the result folder.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterable
from pathlib import Path

from rich.console import Console, Group
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from tunlab.verdict.checks import CheckResult, FlowResult, HopResult, ScenarioResult
from tunlab.verdict.masks import decode, summary

MAX_NEAREST_SHOWN = 2
MAX_DECODE_LINES = 6

_STATUS_STYLE = {"seen": "green", "missing": "red", "altered": "red", "duplicate": "red"}


def _status(row: HopResult) -> Text:
    if row.expected_missing and row.status == "missing":
        return Text("dropped", style="yellow")
    return Text(row.status, style=_STATUS_STYLE.get(row.status, ""))


def hop_table(flow: FlowResult) -> Table:
    """hop | where | outer header | inner packet | seen | ms from sending."""
    verdict = "[green]PASS[/]" if flow.passed else "[red]FAIL[/]"
    title = (f"{escape(flow.probe.name)}: {escape(summary(flow.probe.packet))} — expected "
             f"{flow.probe.expect.describe()} — {verdict}")
    table = Table(title=title, title_justify="left", show_lines=False, expand=False, pad_edge=False)
    table.add_column("#", justify="right", style="dim")
    table.add_column("hop")
    table.add_column("outer header", overflow="fold")
    table.add_column("inner packet", overflow="fold")
    table.add_column("seen")
    table.add_column("ms", justify="right")
    for prefix, rows in (("", flow.hops), ("↩ ", flow.reply_hops)):
        for i, row in enumerate(rows):
            lat = f"{row.latency_ms:.3f}" if row.latency_ms is not None else ""
            outer = row.outer or ("(TUN)" if row.step.direction != "link" else "")
            inner = summary(row.received, brief=True) if row.received else ""
            table.add_row(f"{prefix}{i}", escape(row.step.label), escape(outer), escape(inner),
                          _status(row), lat)
    return table


def _packet_block(label: str, data: bytes) -> Text:
    lines = decode(data, max_lines=MAX_DECODE_LINES)
    text = Text(f"    {label}\n", style="bold")
    for line in lines:
        text.append(f"      {line}\n")
    return text


def byte_differences(expected: bytes, received: bytes, *, cap: int = 6) -> str:
    """The runs of differing bytes (offset: expected/received), TTL and checksums included, capped."""
    n = min(len(expected), len(received))
    runs: list[tuple[int, int]] = []
    for i in range(n):
        if expected[i] != received[i]:
            if runs and runs[-1][1] == i:
                runs[-1] = (runs[-1][0], i + 1)
            else:
                runs.append((i, i + 1))
    parts = [f"{a}: {expected[a:min(b, a + 8)].hex()}/{received[a:min(b, a + 8)].hex()}" for a, b in runs[:cap]]
    if len(runs) > cap:
        parts.append(f"... {len(runs) - cap} more")
    if len(expected) != len(received):
        parts.append(f"lengths {len(expected)}/{len(received)}")
    if not parts:
        return "byte for byte identical"
    return "differing bytes (offset: expected/received): " + " · ".join(parts)


def check_lines(check: CheckResult, *, prefix: str = "", packets: bool = True) -> Group:
    mark = Text("  ✔ " if check.passed else "  ✘ ", style="green" if check.passed else "red bold")
    head = mark + Text(f"{prefix}{check.name}: ", style="bold") + Text(check.message)
    parts: list[Text] = [head]
    if not check.passed:
        where = []
        if check.hop:
            where.append(f"hop: {check.hop}")
        if check.last_seen:
            where.append(f"last seen: {check.last_seen}")
        if where:
            parts.append(Text("    " + "; ".join(where), style="yellow"))
        if not packets:
            return Group(*parts)
        if check.expected:
            parts.append(_packet_block("EXPECTED", check.expected))
        shown = check.nearest[:MAX_NEAREST_SHOWN]
        for i, got in enumerate(shown):
            parts.append(_packet_block(f"RECEIVED (nearest {i + 1})", got))
            if check.expected:
                parts.append(Text(f"      {byte_differences(check.expected, got)}", style="yellow"))
        if check.expected and not shown:
            parts.append(Text("    RECEIVED: nothing comparable at that hop", style="dim"))
    return Group(*parts)


def flow_line(flow: FlowResult) -> Text:
    """A passing probe in one line: hops seen, TTL at the end, round trip."""
    seen = sum(1 for r in flow.hops if r.status == "seen")
    text = Text("  ✔ " if flow.passed else "  ✘ ", style="green" if flow.passed else "red bold")
    text.append(f"{flow.probe.name}", style="bold")
    text.append(f" ({summary(flow.probe.packet, brief=True)}): {flow.probe.expect.describe()}; "
                f"seen on {seen} of {len(flow.hops)} hops")
    if flow.reply_hops and flow.reply_hops[-1].latency_ms is not None:
        text.append(f", reply back in {flow.reply_hops[-1].latency_ms:.2f} ms")
    elif flow.hops and flow.hops[-1].latency_ms is not None and flow.probe.expect.delivered:
        text.append(f", delivered in {flow.hops[-1].latency_ms:.2f} ms")
    elif not flow.probe.expect.delivered and seen:
        last = max(i for i, r in enumerate(flow.hops) if r.status == "seen")
        text.append(f", last seen at {flow.hops[last].step.label}")
    return text


def render(result: ScenarioResult, console: Console, *, tables: str = "some") -> None:
    """The report of one scenario. ``tables``: "all" (a per-hop table per probe), "some" (for the first
    probe and every failing one; passing probes get one line) or "none" (failing checks only)."""
    console.rule(f"[bold]{escape(result.name)}[/]" + (f"  run {result.run_id}" if result.run_id else "")
                 + (f"  seed {result.seed}" if result.seed is not None else ""))
    if result.description:
        console.print(escape(result.description), style="dim")
    for chain in result.chains:
        console.print(f"chain: {escape(chain)}")
    if result.error:
        console.print(f"[red bold]error:[/] {escape(result.error)}")
    for i, flow in enumerate(result.flows):
        table = tables == "all" or (tables == "some" and (i == 0 or not flow.passed))
        if table:
            console.print(hop_table(flow))
        elif flow.passed:
            if tables != "none":
                console.print(flow_line(flow))
            continue
        shown = False  # EXPECTED/RECEIVED once per probe: later checks usually fail for the same reason
        for check in flow.checks:
            if table or not check.passed:
                console.print(check_lines(check, prefix="" if table else f"{flow.probe.name}: ",
                                          packets=not shown))
                shown = shown or (not check.passed and bool(check.expected or check.nearest))
    links = [c for c in result.links if tables != "none" or not c.passed]
    if links:
        console.print(Text("underlay links", style="bold"))
        for check in links:
            console.print(check_lines(check))
    for note in result.notes:
        console.print(f"[yellow]note:[/] {escape(note)}")
    console.print(verdict_line(result), soft_wrap=True)  # one line: its results path never broken mid-word


def verdict_line(result: ScenarioResult) -> Text:
    """One line: PASS/FAIL, name, counts, time, and where the results are kept."""
    n = len(result.checks)
    failed = len(result.failed)
    if result.passed:
        text = Text("PASS ", style="green bold")
        text.append(f"{result.name}: {len(result.flows)} probes, {n} checks passed ({result.duration_s:.1f} s)")
    else:
        text = Text("FAIL ", style="red bold")
        if result.error:
            text.append(f"{result.name}: {result.error}")
        else:
            first = result.failed[0]
            text.append(f"{result.name}: {failed} of {n} checks failed ({result.duration_s:.1f} s); first: "
                        f"{first.name}: {first.message}")
    if result.results_dir:
        text.append(f" — results in {result.results_dir}", style="dim")
    return text


def summary_line(results: Iterable[ScenarioResult]) -> Text:
    results = list(results)
    ok = sum(1 for r in results if r.passed)
    style = "green bold" if ok == len(results) else "red bold"
    return Text(f"{ok} of {len(results)} scenarios passed", style=style)


def render_text(result: ScenarioResult, width: int = 120, *, tables: str = "some") -> str:
    """The report ``tunlab run`` prints, as plain text (no colours)."""
    import io

    buf = io.StringIO()
    render(result, Console(file=buf, width=width, no_color=True, highlight=False, emoji=False), tables=tables)
    return buf.getvalue().rstrip()


def write_text(result: ScenarioResult, path: str | Path) -> None:
    """The same report as plain text (no colours), for the result folder."""
    from tunlab.system.privileges import open_user_file

    with open_user_file(path, "w") as f:  # never through a link planted in the results folder
        render(result, Console(file=f, width=140, no_color=True, highlight=False, emoji=False), tables="all")


def junit_xml(results: Iterable[ScenarioResult]) -> bytes:
    """JUnit XML: one testsuite per scenario, one testcase per check (flows and links)."""
    suites = ET.Element("testsuites")
    for r in results:
        cases = [(f.probe.name, c) for f in r.flows for c in f.checks] + [("links", c) for c in r.links]
        suite = ET.SubElement(suites, "testsuite", name=r.name, tests=str(len(cases) + (1 if r.error else 0)),
                              failures=str(len(r.failed) + (1 if r.error else 0)), errors="0",
                              time=f"{r.duration_s:.3f}")
        if r.run_id:
            props = ET.SubElement(suite, "properties")
            ET.SubElement(props, "property", name="run_id", value=r.run_id)
            if r.results_dir:
                ET.SubElement(props, "property", name="results_dir", value=r.results_dir)
            if r.seed is not None:
                ET.SubElement(props, "property", name="seed", value=str(r.seed))
        if r.error:  # a failure of type "error": the JUnit schema (junit-10.xsd) has no <error> element
            case = ET.SubElement(suite, "testcase", classname=r.name, name="run")
            ET.SubElement(case, "failure", type="error", message=r.error)
        for group, check in cases:
            case = ET.SubElement(suite, "testcase", classname=f"{r.name}.{group}", name=check.name)
            if not check.passed:
                fail = ET.SubElement(case, "failure", message=check.message)
                body = []
                if check.hop:
                    body.append(f"hop: {check.hop}")
                if check.last_seen:
                    body.append(f"last seen: {check.last_seen}")
                if check.expected:
                    body += ["EXPECTED", *("  " + x for x in decode(check.expected))]
                for got in check.nearest[:MAX_NEAREST_SHOWN]:
                    body += ["RECEIVED", *("  " + x for x in decode(got))]
                fail.text = "\n".join(body)
    ET.indent(suites)
    return ET.tostring(suites, encoding="utf-8", xml_declaration=True)
