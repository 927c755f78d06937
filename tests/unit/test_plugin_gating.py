"""The plugin's markers, options and root gating, checked with inner pytest runs (pytester)."""

from __future__ import annotations

import pytest

from tunlab.testing import gating

def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    """An inner pytest run (in process); hypothesis's plugin is left out: it re-imports hypothesis every run."""
    return pytester.runpytest("-p", "no:hypothesispytest", *args)


NETNS_TEST = """
import pytest

@pytest.mark.netns
def test_needs_root():
    pass

@pytest.mark.mininet
def test_needs_mininet():
    pass

def test_plain():
    pass
"""


def test_markers_are_registered(pytester: pytest.Pytester) -> None:
    result = run(pytester, "--markers")
    result.stdout.fnmatch_lines(["@pytest.mark.tunlab_netns: needs root*", "@pytest.mark.tunlab_mininet: *",
                                 "@pytest.mark.netns: the same as tunlab_netns",
                                 "@pytest.mark.mininet: the same as tunlab_mininet",
                                 "@pytest.mark.tunlab_topology(topology*"])
    assert result.ret == 0


def test_markers_pass_strict_markers(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gating, "netns_unavailable_reason", lambda: None)
    monkeypatch.setattr(gating, "mininet_unavailable_reason", lambda netns: None)
    pytester.makepyfile(NETNS_TEST)
    result = run(pytester, "--strict-markers")
    result.assert_outcomes(passed=3)


def test_options_are_in_help(pytester: pytest.Pytester) -> None:
    result = run(pytester, "--help")
    result.stdout.fnmatch_lines(["*--tunlab-keep*", "*--tunlab-backend={netns,mininet}*", "*--tunlab-results=DIR*"])


def test_bad_backend_is_a_usage_error(pytester: pytest.Pytester) -> None:
    result = run(pytester, "--tunlab-backend", "docker")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--tunlab-backend*invalid choice*docker*"])


def test_not_root_skips_with_one_line_reason(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gating, "is_root", lambda: False)
    pytester.makepyfile(NETNS_TEST)
    result = run(pytester, "-rs")
    result.assert_outcomes(passed=1, skipped=2)
    result.stdout.fnmatch_lines([
        "SKIPPED [[]1[]] *: netns tests need root (run pytest with sudo)",
        "SKIPPED [[]1[]] *: mininet tests need root (run pytest with sudo)",
    ])
    assert "Traceback" not in result.stdout.str()


def test_broken_namespaces_skip_with_reason(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gating, "is_root", lambda: True)
    monkeypatch.setattr(gating, "_can_unshare_net", lambda: False)
    pytester.makepyfile(NETNS_TEST)
    result = run(pytester, "-rs")
    result.assert_outcomes(passed=1, skipped=2)
    result.stdout.fnmatch_lines(["SKIPPED * netns tests need to create network namespaces, and unshare*"])


def test_marked_tests_run_when_the_check_says_so(pytester: pytest.Pytester,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gating, "netns_unavailable_reason", lambda: None)
    monkeypatch.setattr(gating, "mininet_unavailable_reason", lambda netns: "no mininet here")
    pytester.makepyfile(NETNS_TEST)
    result = run(pytester, "-rs")
    result.assert_outcomes(passed=2, skipped=1)
    result.stdout.fnmatch_lines(["SKIPPED * no mininet here"])


def test_check_runs_once_and_only_when_needed_or_shown(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []

    def counting() -> str | None:
        calls.append(1)
        return None

    monkeypatch.setattr(gating, "netns_unavailable_reason", counting)
    pytester.makepyfile(test_plain="def test_a():\n    pass\n")
    assert run(pytester, "-p", "no:terminal").ret == 0  # no header to print, no test needing a lab
    assert calls == []
    pytester.makepyfile(NETNS_TEST)
    run(pytester)  # the header and the netns tests share one check
    assert len(calls) == 1


def test_select_tiers_with_m(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gating, "netns_unavailable_reason", lambda: None)
    pytester.makepyfile(NETNS_TEST)
    run(pytester, "-m", "netns").assert_outcomes(passed=1, deselected=2)
    run(pytester, "-m", "not netns and not mininet").assert_outcomes(passed=1, deselected=2)


def test_reason_function_on_this_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gating, "is_root", lambda: False)
    assert gating.netns_unavailable_reason() == "netns tests need root (run pytest with sudo)"
    monkeypatch.setattr(gating, "is_root", lambda: True)
    monkeypatch.setattr(gating, "_can_unshare_net", lambda: False)
    reason = gating.netns_unavailable_reason()
    assert reason is not None and "\n" not in reason and "unshare" in reason


def test_mininet_reason_follows_netns() -> None:
    assert gating.mininet_unavailable_reason("netns tests need root (run pytest with sudo)") == \
        "mininet tests need root (run pytest with sudo)"
