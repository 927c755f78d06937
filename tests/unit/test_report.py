"""Report rendering: hop tables, verdicts, EXPECTED/RECEIVED blocks, JUnit XML (no root)."""

from __future__ import annotations

import io
import xml.etree.ElementTree as ET
from pathlib import Path

from rich.console import Console
from test_traffic_checks import chain, icmp_probe, sent_and_reply, simulate

from tunlab.model.flows import Expect, Probe
from tunlab.verdict.checks import ScenarioResult, check_flow, check_links
from tunlab.traffic.decap import Frame
from tunlab.verdict.report import flow_line, junit_xml, render, summary_line, verdict_line, write_text


def text_of(result: ScenarioResult, **kw: str) -> str:
    buf = io.StringIO()
    render(result, Console(file=buf, width=160, no_color=True), **kw)
    return buf.getvalue()


def passing() -> ScenarioResult:
    ch = chain()
    probe, caps = sent_and_reply(ch)
    return ScenarioResult("demo", chains=["sender > vnf1 > vnf2 > receiver (udp)"], run_id="k3x9",
                          flows=[check_flow(ch, caps, probe)], links=check_links(ch, caps), duration_s=0.42)


def failing() -> ScenarioResult:
    ch = chain()

    def rewrite(label: str, pkt: bytes) -> list[bytes] | None:
        if label == "link l2 vnf1>vnf2":
            b = bytearray(pkt)
            b[-1] ^= 0xFF
            return [bytes(b)]
        return None

    probe, caps = sent_and_reply(ch, rewrite)
    caps.frames["link:l3"].append(Frame(1001.0, bytes(icmp_probe())))  # a bare inner packet
    return ScenarioResult("broken", flows=[check_flow(ch, caps, probe)], links=check_links(ch, caps),
                          duration_s=1.5, results_dir="./tunlab-results/k3x9")


def test_passing_report_has_a_row_per_hop_and_a_pass_verdict() -> None:
    r = passing()
    assert r.passed
    out = text_of(r)
    for label in ("sender TUN (sent)", "link l1 sender>vnf1", "vnf1 TUN in", "vnf2 TUN out", "receiver TUN (delivered)",
                  "link l2 vnf2>vnf1"):
        assert label in out
    assert "UDP 10.88.0.1:40000 > 10.88.0.2:40001" in out
    assert "ICMP echo-request seq=1 ttl=62" in out  # TTL lowered twice at the end
    assert out.count("seen") >= 2 * 8
    assert "EXPECTED" not in out
    assert str(verdict_line(r)).startswith("PASS demo: 1 probes, 7 checks passed (0.4 s)")


def test_failing_report_names_the_hop_and_shows_expected_and_received() -> None:
    r = failing()
    assert not r.passed
    out = text_of(r)
    assert "✘ every hop: altered on link l2 vnf1>vnf2: Raw.load" in out
    assert "hop: link l2 vnf1>vnf2" in out
    assert "EXPECTED" in out and "RECEIVED (nearest 1)" in out
    assert "an inner packet travels bare" in out and "l3" in out
    line = str(verdict_line(r))
    assert line.startswith("FAIL broken: ") and "results in ./tunlab-results/k3x9" in line
    assert len(out.splitlines()) < 120  # capped


def test_dropped_rows_say_dropped_and_compact_mode_prefixes_flow_names() -> None:
    ch = chain()
    p = icmp_probe()
    caps = simulate(ch, [(bytes(p), False)], lambda label, pkt: [] if label == "vnf2 TUN out" else None)
    res = ScenarioResult("fw", flows=[check_flow(ch, caps, Probe("blocked", bytes(p),
                                                                   Expect(delivered=False, dropped_at="vnf2")))])
    assert res.passed
    assert "dropped" in text_of(res)
    compact = text_of(res, tables="none")
    assert "┏" not in compact and "PASS fw" in compact
    line = str(flow_line(res.flows[0]))
    assert "blocked" in line and "dropped at vnf2; seen on 6 of 9 hops, last seen at vnf2 TUN in" in line


def test_run_error_and_summary() -> None:
    r = ScenarioResult("nolab", error="the lab did not come up: relay vnf2 exited")
    assert not r.passed
    assert "FAIL nolab: the lab did not come up" in str(verdict_line(r))
    assert str(summary_line([passing(), r])) == "1 of 2 scenarios passed"


def test_junit_xml_has_a_case_per_check_with_failure_details(tmp_path: object) -> None:
    root = ET.fromstring(junit_xml([passing(), failing(), ScenarioResult("nolab", error="boom")]))
    suites = root.findall("testsuite")
    assert [s.get("name") for s in suites] == ["demo", "broken", "nolab"]
    assert suites[0].get("failures") == "0" and int(suites[0].get("tests") or 0) == 7
    fails = suites[1].findall(".//failure")
    assert fails and any("EXPECTED" in (f.text or "") and "RECEIVED" in (f.text or "") for f in fails)
    # a lab that did not come up: a failure of type "error" (the JUnit schema has no <error> in a testcase)
    assert suites[2].find(".//failure[@type='error']") is not None and suites[2].get("failures") == "1"


def test_junit_xml_is_valid_against_the_junit_schema() -> None:
    import xmlschema

    schema = xmlschema.XMLSchema(str(Path(__file__).resolve().parents[1] / "data" / "junit-10.xsd"))
    failed = failing()
    failed.run_id, failed.results_dir, failed.seed = "r1", "/tmp/x", 7
    schema.validate(junit_xml([passing(), failed, ScenarioResult("nolab", error="boom")]))


def test_plain_text_report_file(tmp_path: object) -> None:
    from pathlib import Path

    path = Path(str(tmp_path)) / "report.txt"
    write_text(failing(), path)
    text = path.read_text()
    assert "FAIL broken" in text and "\x1b[" not in text


def test_some_tables_mode_gives_passing_probes_one_line() -> None:
    ch = chain()
    p1, caps = sent_and_reply(ch)
    flows = [check_flow(ch, caps, p1), check_flow(ch, caps, Probe("again", p1.packet, Expect(reply=True)))]
    out = text_of(ScenarioResult("two", flows=flows))
    assert out.count("┏") == 1  # one table: the first probe's
    assert "✔ again (ICMP echo-request seq=1 ttl=64 len=96): delivered, reply; seen on 9 of 9 hops, reply back in" \
        in out
    assert text_of(ScenarioResult("two", flows=flows), tables="all").count("┏") == 2
