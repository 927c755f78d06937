"""The plugin's lab fixtures, checks and scenario items on real labs, through inner pytest runs (root)."""

from __future__ import annotations

import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

# imported once here: in-process inner runs drop the modules they import, and scapy is slow to import
import scapy.layers.inet  # noqa: F401
import tunlab.lab.lab  # noqa: F401
import tunlab.model.scenario  # noqa: F401
import tunlab.model.topofile  # noqa: F401
import tunlab.run.runner  # noqa: F401
from tunlab.lab.ledger import run_root
from tunlab.testing import leaks
from tunlab.testing.options import safe_name

pytestmark = pytest.mark.netns

HEADER = """
import pytest
from pathlib import Path
from tunlab.model.scenario import Ping, Udp

pytestmark = pytest.mark.netns
SMALL = pytest.mark.tunlab_topology("linear", params={"n_vnfs": 1})


def note(lab, name):
    (Path(__file__).parent / "run_ids").open("a").write(f"{name} {lab.run_id}\\n")


def ping(lab):
    return lab.node("sender").cmd_raises(["ping", "-c", "2", "-i", "0.05", "-W", "2", lab.node("receiver").overlay_ip])
"""


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest("-p", "no:hypothesispytest", *args)


def run_ids(pytester: pytest.Pytester) -> dict[str, str]:
    path = pytester.path / "run_ids"
    return dict(line.split() for line in path.read_text().splitlines()) if path.exists() else {}


def assert_gone(run_id: str) -> None:
    assert leaks.leftovers(leaks.Recorded(run_id=run_id)) == []
    assert not (run_root() / run_id).exists()


def sessions(pytester: pytest.Pytester) -> list[Path]:
    results = pytester.path / "tunlab-results"
    return sorted(p for p in results.iterdir()) if results.is_dir() else []


JUNIT_XSD = Path(__file__).resolve().parents[1] / "data" / "junit-10.xsd"


def junit_properties(path: Path) -> dict[str, list[tuple[str, str]]]:
    """Per test name, the artefact folders JUnit XML names (test-suite properties ``tunlab_artefacts:<id>``);
    the file must be valid against the JUnit schema (junit-10.xsd, as pytest's own tests use it)."""
    import xmlschema

    xmlschema.XMLSchema(str(JUNIT_XSD)).validate(str(path))
    root = ET.parse(path).getroot()
    out: dict[str, list[tuple[str, str]]] = {c.get("name", ""): [] for c in root.iter("testcase")}
    for suite in root.iter("testsuite"):
        for prop in suite.findall("properties/property"):
            name, _, nodeid = prop.get("name", "").partition(":")
            if nodeid:
                out.setdefault(nodeid.split("::")[-1], []).append((name, prop.get("value", "")))
    for case in root.iter("testcase"):
        assert case.find("properties") is None, "no <properties> in a <testcase> (invalid JUnit)"
    return out


def encapsulated_frames(pcap: Path) -> int:
    from scapy.layers.inet import UDP
    from scapy.utils import rdpcap

    return sum(1 for p in rdpcap(str(pcap)) if p.haslayer(UDP) and p[UDP].dport == 55555)


def test_passing_lab_test_leaves_nothing(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_lab=HEADER + """
@SMALL
def test_ping(tunlab_lab):
    note(tunlab_lab, "ping")
    assert "2 received" in ping(tunlab_lab)
""")
    run(pytester).assert_outcomes(passed=1)
    assert sessions(pytester) == []
    assert_gone(run_ids(pytester)["ping"])


def test_failing_lab_test_keeps_pcaps_and_relay_logs(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_lab=HEADER + """
@SMALL
def test_ping(tunlab_lab):
    note(tunlab_lab, "ping")
    ping(tunlab_lab)
    assert False, "the VNF did something wrong"
""")
    result = run(pytester, "--junitxml=junit.xml")
    result.assert_outcomes(failed=1)
    run_id = run_ids(pytester)["ping"]
    assert_gone(run_id)
    (session,) = sessions(pytester)
    folder = session / safe_name("test_lab.py::test_ping")
    # pcaps of every link, each holding the encapsulated pings (2 requests + 2 replies), and of every TUN (the
    # names and formats of `tunlab run`), the pings bare, each with its direction
    assert sorted(p.name for p in (folder / "pcaps").iterdir()) == [
        "link_sender-vnf1.pcap", "link_vnf1-receiver.pcap", "tun_receiver.pcapng", "tun_sender.pcapng",
        "tun_vnf1.pcapng"]
    for pcap in (folder / "pcaps").glob("link_*.pcap"):
        assert encapsulated_frames(pcap) >= 4
    from scapy.layers.inet import ICMP
    from scapy.utils import rdpcap

    assert sum(1 for p in rdpcap(str(folder / "pcaps" / "tun_sender.pcapng")) if p.haslayer(ICMP)) >= 4
    # relay logs and counters of every node, and the failure text
    logs = {p.name for p in (folder / run_id).iterdir()}
    assert {"sender.log", "vnf1.log", "receiver.log", "vnf1.stats.json"} <= logs
    assert "the VNF did something wrong" in (folder / "failure.txt").read_text()
    result.stdout.fnmatch_lines(["*- tunlab artefacts -*", f"kept in {folder}", "  failure.txt"])
    result.stdout.fnmatch_lines([f"  {run_id}/ (*): *receiver.log *sender.log*"])
    result.stdout.fnmatch_lines(["  pcaps/ (5): link_sender-vnf1.pcap link_vnf1-receiver.pcap tun_receiver.pcapng*"])
    assert junit_properties(pytester.path / "junit.xml")["test_ping"] == [("tunlab_artefacts", str(folder))]


def test_keep_keeps_a_passing_lab_tests_artefacts(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_lab=HEADER + """
@SMALL
def test_ping(tunlab_lab):
    note(tunlab_lab, "ping")
    ping(tunlab_lab)
""")
    run(pytester, "--tunlab-keep").assert_outcomes(passed=1)
    run_id = run_ids(pytester)["ping"]
    assert_gone(run_id)
    (session,) = sessions(pytester)
    folder = session / safe_name("test_lab.py::test_ping")
    assert (folder / "pcaps" / "link_sender-vnf1.pcap").is_file() and (folder / run_id / "vnf1.log").is_file()
    assert not (folder / "failure.txt").exists()


def test_leftover_is_a_loud_teardown_error(pytester: pytest.Pytester) -> None:
    """A namespace named with the run's id but not in its ledger survives teardown: the test errors."""
    pytester.makepyfile(test_lab=HEADER + """
import subprocess

@SMALL
def test_leaky(tunlab_lab):
    note(tunlab_lab, "leaky")
    subprocess.run(["ip", "netns", "add", f"tl-{tunlab_lab.run_id}-stray"], check=True)
""")
    result = run(pytester)
    run_id = run_ids(pytester)["leaky"]
    stray = f"tl-{run_id}-stray"
    try:
        result.assert_outcomes(passed=1, errors=1)
        result.stdout.fnmatch_lines([f"*ERROR at teardown of test_leaky*",
                                     f"*tunlab lab {run_id} left 1 thing(s) behind after teardown: namespace {stray}*",
                                     "*- tunlab artefacts -*"])
        (session,) = sessions(pytester)  # kept: the test did not pass cleanly
        assert (session / safe_name("test_lab.py::test_leaky") / "pcaps").is_dir()
    finally:
        subprocess.run(["ip", "netns", "delete", stray], check=False, capture_output=True)
    assert_gone(run_id)


def test_module_scope_shares_one_lab(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_shared=HEADER + """
pytestmark = [pytest.mark.netns, pytest.mark.tunlab_topology("linear", params={"n_vnfs": 1}, scope="module")]

def test_a(tunlab_lab):
    note(tunlab_lab, "a")
    ping(tunlab_lab)

def test_b(tunlab_lab):
    note(tunlab_lab, "b")
    ping(tunlab_lab)

@pytest.mark.tunlab_topology("linear", params={"n_vnfs": 1})
def test_own(tunlab_lab):
    note(tunlab_lab, "own")
""")
    run(pytester).assert_outcomes(passed=3)
    ids = run_ids(pytester)
    assert ids["a"] == ids["b"] != ids["own"]
    for run_id in set(ids.values()):
        assert_gone(run_id)
    assert sessions(pytester) == []


def test_module_lab_artefacts_kept_when_one_test_fails(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_shared=HEADER + """
pytestmark = [pytest.mark.netns, pytest.mark.tunlab_topology("linear", params={"n_vnfs": 1}, scope="module")]

def test_fails(tunlab_lab):
    note(tunlab_lab, "shared")
    ping(tunlab_lab)
    assert False

def test_passes(tunlab_lab):
    ping(tunlab_lab)
""")
    result = run(pytester, "--junitxml=junit.xml")
    result.assert_outcomes(passed=1, failed=1)
    run_id = run_ids(pytester)["shared"]
    assert_gone(run_id)
    (session,) = sessions(pytester)
    folder = session / "test_shared.py--module"
    assert sorted(p.name for p in (folder / "pcaps").glob("link_*")) == ["link_sender-vnf1.pcap", "link_vnf1-receiver.pcap"]
    assert (folder / run_id / "vnf1.log").is_file()
    result.stdout.fnmatch_lines(["*- tunlab artefacts -*", f"kept in {folder}"])
    props = junit_properties(pytester.path / "junit.xml")
    assert props["test_fails"] == [("tunlab_artefacts", str(folder))] and props["test_passes"] == []


def test_indirect_parameters_and_factory(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_param=HEADER + """
from tunlab.model.topology import linear_chain

@pytest.mark.parametrize("tunlab_lab", [linear_chain(0), lambda: linear_chain(1, "tcp")], indirect=True)
def test_each(tunlab_lab):
    note(tunlab_lab, f"n{len(tunlab_lab.topology.vnfs)}")
    assert "2 received" in ping(tunlab_lab)

def test_two_at_once(tunlab_lab_factory):
    a = tunlab_lab_factory("linear", params={"n_vnfs": 0})
    b = tunlab_lab_factory(linear_chain(0), capture=False)
    note(a, "a"); note(b, "b")
    ping(a); ping(b)
""")
    run(pytester).assert_outcomes(passed=3)
    ids = run_ids(pytester)
    assert len(set(ids.values())) == 4
    for run_id in ids.values():
        assert_gone(run_id)


def test_checks_fixture_passes_and_fails_with_decoded_packets(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_checks=HEADER + """
pytestmark = [pytest.mark.netns, SMALL]

def test_ok(tunlab_checks):
    result = tunlab_checks.flows([Ping(), Udp(5000, size=200)])
    assert result.passed and len(result.flows) == 2

def test_wrong_expectation(tunlab_checks):
    tunlab_checks.flows([Udp(5000, expect="dropped at vnf1")])
""")
    result = run(pytester)
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*dropped at vnf1: not dropped: receiver received it*", "*EXPECTED*",
                                 "*UDP sport=* dport=5000*"])
    (session,) = sessions(pytester)
    folder = session / safe_name("test_checks.py::test_wrong_expectation")
    (evidence,) = (folder / "checks").iterdir()
    assert "EXPECTED" in (evidence / "report.txt").read_text()
    assert (evidence / "pcaps" / "link_sender-vnf1.pcap").is_file()
    assert not (session / safe_name("test_checks.py::test_ok")).exists()


def test_scenario_files_run_as_tests(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "100")
    pytester.makeini("[pytest]\ntunlab_scenario_dirs = scenarios\n")
    scenarios = pytester.mkdir("scenarios")
    (scenarios / "small_ok.py").write_text(
        "from tunlab.model.scenario import Ping, Udp\ntopology = 'linear'\nparams = {'n_vnfs': 1}\n"
        "traffic = [Ping(), Udp(5000)]\n")
    (scenarios / "small_wrong.py").write_text(
        "from tunlab.model.scenario import Udp\ntopology = 'linear'\nparams = {'n_vnfs': 1}\n"
        "traffic = [Udp(5000, expect='dropped at vnf1')]\n")
    result = run(pytester, "-ra", "-m", "netns", "scenarios", "--junitxml=junit.xml")
    result.assert_outcomes(passed=1, failed=1)
    out = result.stdout.str()
    # the short summary shows the verdict; the report is drawn at the terminal's width (100 columns)
    result.stdout.fnmatch_lines(["FAILED scenarios/small_wrong.py::small_wrong - FAIL small_wrong: 1 of * checks failed*"])
    report = out[out.index("_ scenario small_wrong _"):out.index("- tunlab artefacts -")]
    assert max(len(line) for line in report.splitlines() if not line.startswith("FAIL ")) <= 100, report
    (session,) = sessions(pytester)
    assert str(session / safe_name("scenarios/small_wrong.py::small_wrong")) in report  # never broken mid-word
    result.stdout.fnmatch_lines(["*_ scenario small_wrong _*", "*small_wrong  run *", "*dropped at vnf1: not dropped*",
                                 "*- tunlab artefacts -*"])
    assert "Traceback" not in out and "def run_scenario_test" not in out  # the report, not Python
    folder = session / safe_name("scenarios/small_wrong.py::small_wrong")
    assert junit_properties(pytester.path / "junit.xml")["small_wrong"] == [("tunlab_artefacts", str(folder))]
    assert (folder / "pcaps").is_dir() and (folder / "checks").is_dir()


def test_checks_failure_first_line_is_the_verdict(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_verdict=HEADER + """
@SMALL
def test_wrong(tunlab_checks):
    tunlab_checks.flows([Udp(5000, expect="dropped at vnf1")])
""")
    result = run(pytester, "-ra")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["FAILED test_verdict.py::test_wrong - FAIL test_wrong: 1 of * checks failed*"])


def test_lone_topology_function_in_the_marker(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_lone=HEADER + """
from tunlab import linear_chain

def small_chain():
    return linear_chain(1)

@pytest.mark.tunlab_topology(small_chain)
def test_ping(tunlab_lab):
    assert sorted(tunlab_lab.nodes) == ["receiver", "sender", "vnf1"]
    ping(tunlab_lab)
""")
    run(pytester).assert_outcomes(passed=1)


BAD_NFT = """
from tunlab import Vnf, linear_chain

def topology():
    return linear_chain(1, vnf=lambda i, name, overlay: Vnf(name, overlay,
                                                          nft="table inet t { chain c { this is not nft } }"))
"""


def test_bring_up_failure_is_one_line_naming_the_file(pytester: pytest.Pytester) -> None:
    topo = pytester.path / "bad_nft.py"
    topo.write_text(BAD_NFT)
    pytester.makepyfile(test_bad=HEADER + f"""
@pytest.mark.tunlab_topology({str(topo)!r})
def test_up(tunlab_lab):
    pass
""")
    result = run(pytester)
    result.assert_outcomes(errors=1)
    out = result.stdout.str()
    error = out[out.index("_ ERROR at setup of test_up _"):out.index("short test summary")]
    first = next(line for line in error.splitlines()[1:] if line.strip())
    assert first.startswith("tunlab: ") and "bad_nft.py" in first and "vnf1" in first, error
    assert "Traceback" not in error and "lab.__enter__()" not in error, error
def test_xdist_workers_build_labs_side_by_side(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_par=HEADER + """
@SMALL
@pytest.mark.parametrize("n", range(4))
def test_par(tunlab_lab, n):
    note(tunlab_lab, f"p{n}")
    ping(tunlab_lab)
    assert n % 2 == 0
""")
    result = pytester.runpytest_subprocess("-p", "no:hypothesispytest", "-n", "2")
    result.assert_outcomes(passed=2, failed=2)
    ids = run_ids(pytester)
    assert len(ids) == 4 and len(set(ids.values())) == 4
    for run_id in ids.values():
        assert_gone(run_id)
    kept = {f.name: s.name for s in sessions(pytester) for f in s.iterdir()}
    assert sorted(kept) == sorted(safe_name(f"test_par.py::test_par[{n}]") for n in (1, 3))
    assert all(name.endswith(("-gw0", "-gw1")) for name in kept.values())
