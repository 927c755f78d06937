"""How tests ask for labs: mistakes are one-line errors at setup, before anything is built (pytester)."""

from __future__ import annotations

import pytest

from tunlab.testing import gating


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    """An inner pytest run (in process); hypothesis's plugin is left out: it re-imports hypothesis every run."""
    return pytester.runpytest("-p", "no:hypothesispytest", *args)


def test_lab_without_topology_is_a_setup_error(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_x(tunlab_lab):\n    pass\n")
    result = run(pytester)
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*tunlab_lab needs a topology: add @pytest.mark.tunlab_topology(topology)*"])
    assert "Traceback" not in result.stdout.str()


def test_bad_scope_is_a_setup_error(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("""
import pytest

@pytest.mark.tunlab_topology("three_vnf", scope="session")
def test_x(tunlab_lab):
    pass
""")
    result = run(pytester)
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*tunlab_topology(scope='session'): scope must be 'function' or 'module'*"])


def test_lab_tests_skip_cleanly_without_root(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    """A user's lab test on a laptop without sudo: skipped with the reason, no lab code is even imported."""
    monkeypatch.setattr(gating, "is_root", lambda: False)
    pytester.makepyfile("""
import pytest

@pytest.mark.netns
@pytest.mark.tunlab_topology("three_vnf")
def test_x(tunlab_lab):
    raise AssertionError("must not run")
""")
    result = run(pytester, "-rs")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["SKIPPED * netns tests need root (run pytest with sudo)"])
    assert not (pytester.path / "tunlab-results").exists()


def test_lab_tests_are_netns_tests_even_unmarked(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gating, "is_root", lambda: False)
    pytester.makepyfile("""
import pytest

@pytest.mark.tunlab_topology("three_vnf")
def test_forgot_the_marker(tunlab_lab):
    raise AssertionError("must not run")

def test_checks_only(tunlab_checks):
    raise AssertionError("must not run")

def test_plain():
    pass
""")
    run(pytester, "-rs").assert_outcomes(passed=1, skipped=2)
    run(pytester, "-m", "not netns").assert_outcomes(passed=1, deselected=2)


def test_mininet_backend_needs_mininet(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gating, "netns_unavailable_reason", lambda: None)
    monkeypatch.setattr(gating, "mininet_unavailable_reason", lambda netns: "no mininet on this machine")
    pytester.makepyfile("""
import pytest

@pytest.mark.netns
@pytest.mark.tunlab_topology("three_vnf")
def test_lab(tunlab_lab):
    raise AssertionError("must not run")
""")
    result = run(pytester, "-rs", "--tunlab-backend", "mininet")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["SKIPPED * no mininet on this machine"])
