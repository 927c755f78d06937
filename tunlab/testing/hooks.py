"""pytest hooks of the tunlab plugin: options, markers, root gating, the netns-marker rule, reports."""

from __future__ import annotations

from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest

from tunlab.testing import artefacts, gating, options, scenarios, topomark

MARKERS = (
    "tunlab_netns: needs root and network namespaces (skipped otherwise, with the reason); alias: netns",
    "tunlab_mininet: needs Debian's mininet package as well as root (skipped otherwise); alias: mininet",
    "netns: the same as tunlab_netns",
    "mininet: the same as tunlab_mininet",
    "tunlab_topology(topology, *, scope='function', params=None, capture=True, **lab_kwargs): the lab the "
    "tunlab_lab fixture builds, from a Topology, a function returning one (alone is fine: "
    "tunlab_topology(my_chain)), or a shipped topology's name or a file (with params); scope='module' shares "
    "one lab between the tests of a module; capture=False: no pcaps",
    "tunlab_scenario: a scenario file collected as a test item",
)

#: the requirement markers and their aliases: either name selects (-m) and gates the test
ALIASES = {"netns": "tunlab_netns", "mininet": "tunlab_mininet"}

REASONS_KEY = pytest.StashKey[dict[str, str | None]]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("tunlab", "tunlab labs (network namespaces, relays, scenarios)")
    options.add_options(group.addoption)
    options.add_ini(parser)


def pytest_configure(config: pytest.Config) -> None:
    for line in MARKERS:
        config.addinivalue_line("markers", line)
    topomark.install(config)


def pytest_report_header(config: pytest.Config) -> str:
    """One line: can lab tests run here, and if not, why they will be skipped."""
    reasons = skip_reasons(config)
    backend = artefacts.settings(config).backend
    if reasons["netns"] is not None:
        return f"tunlab: lab tests (netns, mininet) will be skipped: {reasons['netns']}"
    mininet = "mininet tests can run" if reasons["mininet"] is None else \
        f"mininet tests will be skipped: {reasons['mininet']}"
    return f"tunlab: netns tests can run here (root, network namespaces); {mininet}; labs built with {backend}"


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """pytest-xdist controller: give every worker the same run token, so one run is one folder name."""
    node.workerinput["tunlab_token"] = artefacts.settings(node.config).session_token


def skip_reasons(config: pytest.Config) -> dict[str, str | None]:
    """The netns and mininet verdicts, computed once per session (the netns probe starts a process)."""
    reasons = config.stash.get(REASONS_KEY, None)
    if reasons is None:
        netns = gating.netns_unavailable_reason()
        reasons = {"netns": netns, "mininet": gating.mininet_unavailable_reason(netns)}
        config.stash[REASONS_KEY] = reasons
    return reasons


def _under_netns_paths(config: pytest.Config, path: Path) -> bool:
    roots: list[Path] = [Path(p) for p in config.getini("tunlab_netns_paths")]
    return any(path.is_relative_to(r) for r in roots)


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(
        collector: pytest.Collector) -> Generator[None, pytest.CollectReport, pytest.CollectReport]:
    """Under ``tunlab_netns_paths``, a test without the netns marker is a collection error of its file."""
    report = yield
    if report.passed and _under_netns_paths(collector.config, Path(collector.path)):
        bad = [x.nodeid for x in report.result if isinstance(x, pytest.Item) and not _has(x, "netns")]
        if bad:
            shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
            report.outcome = "failed"
            report.longrepr = (f"tunlab: {shown} lack(s) @pytest.mark.netns, and every test under "
                               "tunlab_netns_paths needs it (add pytestmark = pytest.mark.netns, or move the "
                               "test to an unprivileged folder)")
            report.result = []
    return report


LAB_FIXTURES = frozenset({"tunlab_lab", "tunlab_lab_factory", "tunlab_module_labs", "tunlab_checks"})


def _has(item: pytest.Item, name: str) -> bool:
    return item.get_closest_marker(name) is not None or item.get_closest_marker(ALIASES[name]) is not None


def _needs(config: pytest.Config, item: pytest.Item) -> list[str]:
    """What ``item`` needs: "netns" and/or "mininet". A test using a lab fixture needs netns even when its
    author forgot the marker (the marker is added, so -m netns / -m "not netns" select it rightly), and
    mininet as well when labs are built with --tunlab-backend mininet. Each marker and its tunlab_ alias are
    both set, so either name selects the test."""
    uses_lab = bool(LAB_FIXTURES.intersection(getattr(item, "fixturenames", ())))
    needs = [name for name in ALIASES if _has(item, name)]
    if uses_lab and "netns" not in needs:
        needs.insert(0, "netns")
    if uses_lab and artefacts.settings(config).backend == "mininet" and "mininet" not in needs:
        needs.append("mininet")
    for name in needs:
        for marker in (name, ALIASES[name]):
            if item.get_closest_marker(marker) is None:
                item.add_marker(marker)
    return needs


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    needs = [(item, name) for item in items for name in _needs(config, item)]
    if not needs:
        return
    reasons = skip_reasons(config)
    for item, name in needs:
        reason = reasons[name]
        if reason is not None:
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, Any]:
    report: pytest.TestReport = yield
    item.stash.setdefault(artefacts.REPORTS_KEY, {})[report.when] = report
    if report.failed and call.excinfo is not None:
        verdict_first(report, call.excinfo.value)
    if report.failed:
        module = item.getparent(pytest.Module)
        if module is not None:
            module.stash[artefacts.MODULE_FAILED_KEY] = True
        for snapshot in item.stash.get(artefacts.SNAPSHOTS_KEY, []):
            snapshot()
        folders = item.stash.get(artefacts.FOLDERS_KEY, [])
        if folders:
            for folder in folders:
                artefacts.write_failure(folder, report)
            add_section(report, artefacts.SECTION, artefacts.describe(folders))
    return report


def verdict_first(report: pytest.TestReport, exc: BaseException) -> None:
    """A tunlab check failure's one-line verdict is the line `-ra` and CI summaries show (not the exception's
    module path and the report's first rule)."""
    from tunlab.testing.labchecks import ChecksFailed

    if isinstance(exc, ChecksFailed):
        crash = getattr(report.longrepr, "reprcrash", None)
        if crash is not None:
            crash.message = exc.verdict


def add_section(report: pytest.TestReport, title: str, text: str) -> None:
    """Add a titled section to the failure text itself: shown with the failure in the terminal, and in the
    <failure> of JUnit XML (report.sections would reach neither JUnit nor pytest-xdist's controller as text)."""
    longrepr = report.longrepr
    if hasattr(longrepr, "addsection"):
        longrepr.addsection(title, text)  # type: ignore[union-attr]
    elif isinstance(longrepr, str):
        report.longrepr = f"{longrepr}\n{'-' * 8} {title} {'-' * 8}\n{text}"
    else:
        report.sections.append((title, text))


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    return scenarios.collect_file(file_path, parent)


@pytest.hookimpl(tryfirst=True)
def pytest_pycollect_makemodule(module_path: Path, parent: pytest.Collector) -> pytest.Module | None:
    return scenarios.make_module(module_path, parent)


def pytest_unconfigure(config: pytest.Config) -> None:
    topomark.uninstall(config)
    artefacts.remove_empty_session_dir(config)
