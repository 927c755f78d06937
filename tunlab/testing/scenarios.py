"""Scenario files as test items, when a project asks for them: ``tunlab_scenario_dirs = ["scenarios"]`` in its
pytest configuration makes ``pytest scenarios/`` (or one file) run each scenario as one test.

Opt-in: ``tunlab_scenario_dirs`` (folders, relative to the configuration file; none by default) names the
folders whose ``*.py`` files (not ``_*``, ``conftest.py`` or files pytest collects as tests) are scenarios. A
file there that sets neither ``topology`` nor ``traffic`` is a helper module, not a scenario, and is left alone. A scenario's item is
marked ``netns`` and ``tunlab_scenario``, builds its lab with the lab fixtures and runs the scenario's checks
on it (the same steps as ``tunlab run``), keeps the evidence in the test's artefact folder when it fails, and
reports the verdict and the failed checks (EXPECTED / RECEIVED decoded) instead of a traceback. A file that
does not load is a collection error of one line naming the field.
"""

from __future__ import annotations

import ast
import fnmatch
import types
from pathlib import Path
from typing import Any

import pytest

from tunlab.errors import TunlabError


def scenario_dirs(config: pytest.Config) -> list[Path]:
    return [Path(p) for p in config.getini("tunlab_scenario_dirs")]


SCENARIO_NAMES = frozenset({"topology", "traffic"})


def looks_like_scenario(path: Path) -> bool:
    """Does the file set ``topology`` or ``traffic`` at module level (a scenario, perhaps with a mistake the
    loader will name), or neither (a helper module)? A file that does not parse is treated as a scenario, so
    its loader reports the syntax error."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    except (SyntaxError, ValueError, OSError):
        return True
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else \
            [node.target] if isinstance(node, (ast.AnnAssign, ast.AugAssign)) else []
        if any(isinstance(t, ast.Name) and t.id in SCENARIO_NAMES for t in targets):
            return True
        if isinstance(node, (ast.FunctionDef, ast.ImportFrom)) and (
                getattr(node, "name", None) in SCENARIO_NAMES
                or any((a.asname or a.name) in SCENARIO_NAMES for a in getattr(node, "names", []))):
            return True
    return False


def is_scenario_file(config: pytest.Config, path: Path) -> bool:
    if path.suffix != ".py" or path.name.startswith("_") or path.name == "conftest.py":
        return False
    if not any(path.is_relative_to(d) for d in scenario_dirs(config)):
        return False
    return looks_like_scenario(path)


def _is_test_module(config: pytest.Config, path: Path) -> bool:
    """Would pytest's python plugin collect this file as a test module (``python_files``)?"""
    for pattern in config.getini("python_files"):
        if "/" in pattern or "\\" in pattern:
            if fnmatch.fnmatch(str(path), f"*{pattern}" if not pattern.startswith("*") else pattern):
                return True
        elif fnmatch.fnmatch(path.name, pattern):
            return True
    return False


def _runner(scenario: Any) -> Any:
    def run_scenario_test(tunlab_lab_factory: Any, tunlab_artefacts: Path, request: pytest.FixtureRequest) -> None:
        """Build the scenario's lab (pcaps of every link, relay logs, leak check: the lab fixtures) and run
        the scenario's checks on it (the same runner steps as ``tunlab run``)."""
        from tunlab.testing.artefacts import report_width
        from tunlab.testing.labchecks import LabChecks

        lab = tunlab_lab_factory(scenario.topology)
        LabChecks(lab, tunlab_artefacts, scenario.name, width=report_width(request.config)).scenario(scenario)

    return run_scenario_test


class ScenarioItem(pytest.Function):
    """One scenario run as a test (a Function, so fixtures, marks and reports work as for any test)."""

    scenario: Any = None

    def reportinfo(self) -> tuple[Path, int | None, str]:
        return self.path, 0, f"scenario {self.name}"

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException]) -> Any:  # type: ignore[override]
        """A failed check shows the scenario report (hop tables, EXPECTED/RECEIVED), not Python frames."""
        from tunlab.testing.labchecks import ChecksFailed

        if isinstance(excinfo.value, ChecksFailed):
            rep = excinfo.getrepr(style="value")  # the report alone; its first line (the verdict) for -ra
            if rep.reprcrash is not None:
                rep.reprcrash.message = excinfo.value.verdict
            return rep
        return super().repr_failure(excinfo)


class ScenarioFile(pytest.Module):
    """A scenario file: loaded with tunlab's scenario loader, never imported as a test module."""

    def _getobj(self) -> types.ModuleType:
        module = types.ModuleType(f"tunlab_scenario_item_{self.path.stem}")
        module.__file__ = str(self.path)
        return module

    def _shown_path(self) -> Path:
        """The path as the user would type it (relative to the current folder when it is below it)."""
        try:
            return self.path.relative_to(Path.cwd())
        except ValueError:
            return self.path

    def collect(self) -> list[pytest.Item]:
        from tunlab.model.scenario import load_scenario

        try:
            scenario = load_scenario(self._shown_path())
        except TunlabError as exc:
            raise self.CollectError(f"tunlab: {exc}") from None
        item = ScenarioItem.from_parent(self, name=scenario.name, callobj=_runner(scenario))
        item.scenario = scenario
        item.add_marker("netns")
        item.add_marker("tunlab_netns")
        item.add_marker("tunlab_scenario")
        return [item]


def collect_file(file_path: Path, parent: pytest.Collector) -> ScenarioFile | None:
    """``pytest_collect_file``: scenario files the python plugin would not collect (not test_*.py)."""
    if not is_scenario_file(parent.config, file_path):
        return None
    if parent.session.isinitpath(file_path):
        return None  # the python plugin asks pytest_pycollect_makemodule for it: see make_module
    if _is_test_module(parent.config, file_path):
        return None
    return ScenarioFile.from_parent(parent, path=file_path)


def make_module(module_path: Path, parent: pytest.Collector) -> ScenarioFile | None:
    """``pytest_pycollect_makemodule``: a scenario file named on the command line is a ScenarioFile."""
    if is_scenario_file(parent.config, module_path):
        return ScenarioFile.from_parent(parent, path=module_path)
    return None
