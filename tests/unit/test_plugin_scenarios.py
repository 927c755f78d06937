"""Scenario files collected as test items: names, marks, one-line load errors, skip without root (pytester)."""

from __future__ import annotations

import pytest

# imported once here: in-process inner runs drop the modules they import, and scapy is slow to import
import scapy.layers.inet  # noqa: F401
import tunlab.model.scenario  # noqa: F401
import tunlab.model.topofile  # noqa: F401
import tunlab.verdict.checks  # noqa: F401
from tunlab.testing import gating

OK = """
'''Two pings across the three-VNF chain.'''
from tunlab.model.scenario import Ping

topology = "three_vnf"
traffic = [Ping(), Ping(size="mtu")]
"""


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    """An inner pytest run (in process); hypothesis's plugin is left out: it re-imports hypothesis every run."""
    return pytester.runpytest("-p", "no:hypothesispytest", *args)


@pytest.fixture
def project(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeini("[pytest]\ntunlab_scenario_dirs = scenarios\n")  # opt-in
    sc = pytester.mkdir("scenarios")
    (sc / "chain_ping.py").write_text(OK)
    (sc / "_helpers.py").write_text("X = 1\n")
    pytester.makepyfile(test_unit="def test_u():\n    pass\n")
    return pytester


def test_scenario_files_are_items_marked_netns(project: pytest.Pytester) -> None:
    result = run(project, "--collect-only", "-q", "scenarios")
    result.stdout.fnmatch_lines(["scenarios/chain_ping.py::chain_ping", "1 test collected*"])
    result = run(project, "--collect-only", "-q", "-m", "netns and tunlab_scenario", "scenarios/chain_ping.py")
    result.stdout.fnmatch_lines(["scenarios/chain_ping.py::chain_ping", "1 test collected*"])
    result = run(project, "--collect-only", "-q", "-m", "not netns", ".")
    result.stdout.fnmatch_lines(["test_unit.py::test_u", "1/2 tests collected (1 deselected)*"])


def test_broken_scenario_is_a_one_line_collection_error(project: pytest.Pytester) -> None:
    (project.path / "scenarios" / "typo.py").write_text(
        "from tunlab.model.scenario import Ping\ntopology = 'three_vnf'\ntrafic = [Ping()]\n")
    result = run(project, "scenarios")
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.fnmatch_lines(["*ERROR collecting scenarios/typo.py*",
                                 "tunlab: scenarios/typo.py, traffic: is missing or empty*"])
    assert "Traceback" not in result.stdout.str()


def test_scenarios_skip_without_root(project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gating, "is_root", lambda: False)
    result = run(project, "-rs", "scenarios")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["SKIPPED * netns tests need root (run pytest with sudo)"])


def test_a_scenarios_folder_is_not_collected_without_the_ini_key(pytester: pytest.Pytester) -> None:
    """A user's own `scenarios/` folder (with a plain helper module) is theirs, until they opt in."""
    sc = pytester.mkdir("scenarios")
    (sc / "chain_ping.py").write_text(OK)
    (sc / "helpers.py").write_text("import nothing_like_this_exists\n")
    pytester.makepyfile(test_unit="def test_u():\n    pass\n")
    result = run(pytester, "--collect-only", "-q", ".")
    result.stdout.fnmatch_lines(["test_unit.py::test_u", "1 test collected*"])
    assert result.ret == pytest.ExitCode.OK


def test_a_helper_module_in_a_scenario_folder_is_left_alone(project: pytest.Pytester) -> None:
    (project.path / "scenarios" / "helpers.py").write_text("from tunlab.model.scenario import Ping\n"
                                                           "def flows():\n    return [Ping()]\n")
    result = run(project, "--collect-only", "-q", "scenarios")
    result.stdout.fnmatch_lines(["scenarios/chain_ping.py::chain_ping", "1 test collected*"])
    assert result.ret == pytest.ExitCode.OK


def test_other_folders_are_not_scenarios(pytester: pytest.Pytester) -> None:
    (pytester.mkdir("examples") / "chain_ping.py").write_text(OK)
    result = run(pytester, "--collect-only", "-q", "examples")
    assert result.ret == pytest.ExitCode.NO_TESTS_COLLECTED


def test_scenario_dirs_ini(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\ntunlab_scenario_dirs = labs\n")
    (pytester.mkdir("labs") / "chain_ping.py").write_text(OK)
    result = run(pytester, "--collect-only", "-q", "labs")
    result.stdout.fnmatch_lines(["labs/chain_ping.py::chain_ping"])
