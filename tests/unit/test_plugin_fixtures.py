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
