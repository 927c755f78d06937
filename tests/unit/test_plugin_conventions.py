"""The plugin follows pytest's conventions (pytester, no root): the topology marker takes a function alone,
prefixed marker aliases, the report header, the verdict as a failure's first line, the terminal's width,
valid JUnit XML, typed fixtures, no private pytest imports."""

from __future__ import annotations

import ast
import typing
from pathlib import Path

import pytest

from tunlab.testing import gating

PLUGIN_DIR = Path(__file__).resolve().parents[2] / "tunlab" / "testing"
JUNIT_XSD = Path(__file__).resolve().parents[1] / "data" / "junit-10.xsd"


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest("-p", "no:hypothesispytest", *args)


LONE = """
import pytest

def fw_chain():
    raise AssertionError("not called at import")

def fw_params(n=3):
    return n

pytestmark = pytest.mark.tunlab_topology(fw_chain)

@pytest.fixture
def topo(request):
    return request.node.get_closest_marker("tunlab_topology")

def test_module_level(topo):
    assert topo.args == (fw_chain,) and topo.kwargs == {}

@pytest.mark.tunlab_topology(fw_params)
def test_lone_function_with_defaults(topo):
    assert topo.args == (fw_params,)

@pytest.mark.tunlab_topology(fw_chain, scope="module")
def test_with_kwargs(topo):
    assert topo.args == (fw_chain,) and topo.kwargs == {"scope": "module"}

@pytest.mark.tunlab_topology.with_args(fw_params)
def test_with_args(topo):
    assert topo.args == (fw_params,)

@pytest.mark.tunlab_topology
def test_bare_marker_still_marks_the_test(request):
    assert request.node.get_closest_marker("tunlab_topology") is not None

@pytest.mark.tunlab_topology("three_vnf")
class TestInAClass:
    def test_name(self, topo):
        assert topo.args == ("three_vnf",)
"""


def test_topology_marker_takes_a_function_alone(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_lone=LONE)
    result = run(pytester, "--strict-markers", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=6)


def test_without_the_plugin_a_lone_function_breaks_the_module(pytester: pytest.Pytester) -> None:
    """What the plugin fixes (so the test above can fail): pytest's own marker takes fw_chain as the
    decorated object and then calls it with the test."""
    pytester.makeini("[pytest]\nmarkers =\n    anything: a marker without tunlab's handling\n")
    pytester.makepyfile(test_lone="import pytest\ndef fw(): pass\n@pytest.mark.anything(fw)\ndef test_x(): pass\n")
    result = run(pytester, "-p", "no:tunlab")
    result.stdout.fnmatch_lines(["*TypeError: fw() takes 0 positional arguments but 1 was given*"])


ALIASED = """
import pytest

@pytest.mark.tunlab_netns
def test_prefixed():
    pass

@pytest.mark.netns
def test_short():
    pass

@pytest.mark.tunlab_mininet
def test_mininet():
    pass

def test_plain():
    pass
"""


def test_prefixed_marker_aliases(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gating, "is_root", lambda: False)
    pytester.makepyfile(test_alias=ALIASED)
    result = run(pytester, "-rs", "--strict-markers")
    result.assert_outcomes(passed=1, skipped=3)
    result.stdout.fnmatch_lines(["SKIPPED * netns tests need root (run pytest with sudo)"])
    monkeypatch.setattr(gating, "netns_unavailable_reason", lambda: None)
    monkeypatch.setattr(gating, "mininet_unavailable_reason", lambda netns: None)
    run(pytester, "-m", "netns").assert_outcomes(passed=2, deselected=2)         # either name selects
    run(pytester, "-m", "tunlab_netns").assert_outcomes(passed=2, deselected=2)
    run(pytester, "-m", "mininet").assert_outcomes(passed=1, deselected=3)


def test_netns_paths_accept_the_prefixed_marker(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gating, "netns_unavailable_reason", lambda: None)
    pytester.makeini("[pytest]\ntunlab_netns_paths = root\n")
    (pytester.mkdir("root") / "test_r.py").write_text(
        "import pytest\npytestmark = pytest.mark.tunlab_netns\ndef test_r():\n    pass\n")
    run(pytester, "root").assert_outcomes(passed=1)


def test_report_header_says_why_lab_tests_skip(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gating, "is_root", lambda: False)
    pytester.makepyfile(test_a="def test_a():\n    pass\n")
    result = run(pytester)
    result.stdout.fnmatch_lines(["tunlab: lab tests (netns, mininet) will be skipped: netns tests need root*"])
    monkeypatch.setattr(gating, "netns_unavailable_reason", lambda: None)
    monkeypatch.setattr(gating, "mininet_unavailable_reason", lambda netns: "no mnexec")
    result = run(pytester)
    result.stdout.fnmatch_lines(["tunlab: netns tests can run here*; mininet tests will be skipped: no mnexec;*"])


FAILING_CHECKS = """
from tunlab.testing.labchecks import ChecksFailed

def test_checks():
    raise ChecksFailed("FAIL chain: 1 of 9 checks failed; first: delivered: lost at vnf2\\n" + "x" * 10)
"""


def test_a_failed_check_shows_its_verdict_in_the_short_summary(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_v=FAILING_CHECKS)
    result = run(pytester, "-ra")
    result.stdout.fnmatch_lines(["FAILED test_v.py::test_checks - FAIL chain: 1 of 9 checks failed*"])


def test_report_width_is_the_terminals(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "90")
    pytester.makepyfile(test_w="from tunlab.testing.artefacts import report_width\n"
                               "def test_w(request):\n    assert report_width(request.config) == 86\n")
    run(pytester).assert_outcomes(passed=1)


def test_junit_xml_is_valid_with_kept_artefacts(pytester: pytest.Pytester) -> None:
    import xmlschema

    pytester.makepyfile(test_j="def test_fail(tunlab_artefacts):\n    assert False\n"
                               "def test_pass(tunlab_artefacts):\n    pass\n")
    run(pytester, "--junitxml=junit.xml", "--tunlab-keep").assert_outcomes(passed=1, failed=1)
    xml = (pytester.path / "junit.xml").read_text()
    xmlschema.XMLSchema(str(JUNIT_XSD)).validate(str(pytester.path / "junit.xml"))
    assert 'name="tunlab_artefacts:test_j.py::test_fail"' in xml
    assert "tunlab artefacts" in xml.split('name="test_fail"')[1].split("</testcase>")[0]  # in the failure text


def test_no_private_pytest_imports() -> None:
    for path in PLUGIN_DIR.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not any(n.startswith("_pytest") for n in names), path


def test_fixtures_are_typed() -> None:
    from tunlab.lab.lab import Lab
    from tunlab.testing import fixtures
    from tunlab.testing.labchecks import LabChecks
    from tunlab.testing.labs import LabFactory

    def returns(fixture: object) -> object:
        func = getattr(fixture, "__wrapped__", None) or getattr(fixture, "_get_wrapped_function")()
        return typing.get_type_hints(func, vars(fixtures) | {"Lab": Lab, "LabChecks": LabChecks})["return"]

    assert returns(fixtures.tunlab_lab) is Lab
    assert typing.get_args(returns(fixtures.tunlab_checks))[0] is LabChecks
    assert typing.get_args(returns(fixtures.tunlab_lab_factory))[0] is LabFactory
    assert typing.get_args(returns(fixtures.tunlab_artefacts))[0] is Path
