"""Per-test artefact folders: kept and named on failure, removed on success, --tunlab-keep, xdist (pytester)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tunlab.testing.options import safe_name


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    """An inner pytest run (in process); hypothesis's plugin is left out: it re-imports hypothesis every run."""
    return pytester.runpytest("-p", "no:hypothesispytest", *args)


TESTS = """
import pytest

def test_pass(tunlab_artefacts):
    (tunlab_artefacts / "log.txt").write_text("fine")

def test_fail(tunlab_artefacts):
    (tunlab_artefacts / "log.txt").write_text("relay said: boom")
    assert 1 == 2, "the packet never arrived"

def test_no_fixture():
    assert False
"""


def session_dirs(results: Path) -> list[Path]:
    return sorted(p for p in results.iterdir() if p.is_dir()) if results.is_dir() else []


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


def test_failure_keeps_folder_and_names_it(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_mod=TESTS)
    result = run(pytester, "--junitxml=junit.xml")
    result.assert_outcomes(passed=1, failed=2)
    results = pytester.path / "tunlab-results"
    (session,) = session_dirs(results)
    assert session.name.endswith("-main")
    kept = sorted(p.name for p in session.iterdir())
    assert kept == [safe_name("test_mod.py::test_fail")]          # the passing test's folder is gone
    folder = session / kept[0]
    assert (folder / "log.txt").read_text() == "relay said: boom"
    assert "the packet never arrived" in (folder / "failure.txt").read_text()
    # named in the failure report, with its files
    result.stdout.fnmatch_lines(["*- tunlab artefacts -*", f"kept in {folder}", "  failure.txt", "  log.txt"])
    # and in JUnit XML, only for the failing test that has a folder
    props = junit_properties(pytester.path / "junit.xml")
    assert props["test_fail"] == [("tunlab_artefacts", str(folder))]
    assert props["test_pass"] == [] and props["test_no_fixture"] == []


def test_success_keeps_nothing(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_ok="def test_a(tunlab_artefacts):\n    (tunlab_artefacts / 'x').write_text('x')\n")
    result = run(pytester, "--junitxml=junit.xml")
    result.assert_outcomes(passed=1)
    assert session_dirs(pytester.path / "tunlab-results") == []
    assert junit_properties(pytester.path / "junit.xml")["test_a"] == []
    assert "tunlab artefacts" not in result.stdout.str()


def test_keep_keeps_passing_tests(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_mod=TESTS)
    result = run(pytester, "--tunlab-keep", "--junitxml=junit.xml")
    result.assert_outcomes(passed=1, failed=2)
    (session,) = session_dirs(pytester.path / "tunlab-results")
    passing = session / safe_name("test_mod.py::test_pass")
    assert (passing / "log.txt").read_text() == "fine"
    assert not (passing / "failure.txt").exists()
    assert junit_properties(pytester.path / "junit.xml")["test_pass"] == [("tunlab_artefacts", str(passing))]


def test_results_option_and_runs_do_not_share_folders(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_mod=TESTS)
    run(pytester, "--tunlab-results", "out/here").assert_outcomes(passed=1, failed=2)
    run(pytester, "--tunlab-results", "out/here").assert_outcomes(passed=1, failed=2)
    assert not (pytester.path / "tunlab-results").exists()
    first, second = session_dirs(pytester.path / "out" / "here")
    assert first.name != second.name
    for session in (first, second):
        assert (session / safe_name("test_mod.py::test_fail") / "log.txt").exists()


def test_parametrized_ids_get_their_own_folders(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_p="""
import pytest

@pytest.mark.parametrize("n", ["a/b", "a b", "a:b"])
def test_p(tunlab_artefacts, n):
    (tunlab_artefacts / "n").write_text(n)
    assert False
""")
    run(pytester).assert_outcomes(failed=3)
    (session,) = session_dirs(pytester.path / "tunlab-results")
    folders = list(session.iterdir())
    assert sorted((f / "n").read_text() for f in folders) == ["a b", "a/b", "a:b"]


def test_xdist_workers_do_not_collide(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_x="""
import os
import pytest

@pytest.mark.parametrize("n", range(6))
def test_x(tunlab_artefacts, n):
    (tunlab_artefacts / "worker").write_text(os.environ["PYTEST_XDIST_WORKER"])
    assert n % 2 == 0
""")
    result = pytester.runpytest_subprocess("-p", "no:hypothesispytest", "-n", "2")
    result.assert_outcomes(passed=3, failed=3)
    sessions = session_dirs(pytester.path / "tunlab-results")
    assert {s.name.rsplit("-", 1)[1] for s in sessions} <= {"gw0", "gw1"}
    assert len({s.name.rsplit("-", 1)[0] for s in sessions}) == 1   # one run token shared by the workers
    kept = {f.name: (f / "worker").read_text() for s in sessions for f in s.iterdir()}
    assert sorted(kept) == sorted(safe_name(f"test_x.py::test_x[{n}]") for n in (1, 3, 5))
    for session in sessions:
        for folder in session.iterdir():
            assert session.name.endswith("-" + kept[folder.name])
            result.stdout.fnmatch_lines([f"kept in {folder}"])


def test_unmarked_test_under_netns_paths_fails_collection(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\ntunlab_netns_paths = root_tests\n")
    sub = pytester.mkdir("root_tests")
    (sub / "test_r.py").write_text("import pytest\n\n@pytest.mark.netns\ndef test_ok():\n    pass\n\n"
                                   "def test_forgot():\n    pass\n")
    pytester.makepyfile(test_u="def test_unit():\n    pass\n")
    for args in ((), ("-n", "2")):
        result = run(pytester, *args)
        assert result.ret in (pytest.ExitCode.INTERRUPTED, pytest.ExitCode.TESTS_FAILED)
        result.stdout.fnmatch_lines(["*ERROR collecting root_tests/test_r.py*",
                                     "tunlab: root_tests/test_r.py::test_forgot lack(s) @pytest.mark.netns, *"])
        assert "INTERNALERROR" not in result.stdout.str()
    (sub / "test_r.py").write_text("import pytest\n\npytestmark = pytest.mark.netns\n\ndef test_forgot():\n    pass\n")
    assert run(pytester, "-m", "not netns").ret == pytest.ExitCode.OK


def test_safe_name() -> None:
    assert safe_name("tests/x/test_a.py::TestA::test_b") == "tests-x-test_a.py--TestA--test_b"
    assert safe_name("t.py::test_b[a/b]").startswith("t.py--test_b-a-b-")
    assert safe_name("t.py::test_b[a/b]") != safe_name("t.py::test_b[a-b]")
    long = safe_name("t.py::test_" + "x" * 300)
    assert len(long) == 120 and long != safe_name("t.py::test_" + "x" * 299 + "y")
