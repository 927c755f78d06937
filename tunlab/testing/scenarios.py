"""Scenario files as test items: ``pytest scenarios/`` (or one file) runs each scenario as one test.

A file is a scenario when it is a ``*.py`` file (not ``_*`` or ``conftest.py``) in a folder whose name is in
the ``tunlab_scenario_dirs`` ini option (default ``scenarios``). Its item is marked ``netns`` and
``tunlab_scenario``, builds its lab with the lab fixtures and runs the scenario's checks on it (the same
steps as ``tunlab run``), keeps the evidence in the test's artefact folder when it fails, and reports the
failed checks (EXPECTED / RECEIVED decoded) instead of a traceback. A file that does not load is a
collection error of one line naming the field.
"""

from __future__ import annotations

import types
from pathlib import Path
from typing import Any

import pytest

from tunlab.errors import TunlabError


def is_scenario_file(config: pytest.Config, path: Path) -> bool:
    dirs = config.getini("tunlab_scenario_dirs")
    return (path.suffix == ".py" and path.parent.name in dirs and not path.name.startswith("_")
            and path.name != "conftest.py")


def _runner(scenario: Any) -> Any:
    def run_scenario_test(tunlab_lab_factory: Any, tunlab_artefacts: Path) -> None:
        """Build the scenario's lab (pcaps of every link, relay logs, leak check: the lab fixtures) and run
        the scenario's checks on it (the same runner steps as ``tunlab run``)."""
        from tunlab.testing.labchecks import LabChecks

        lab = tunlab_lab_factory(scenario.topology)
        LabChecks(lab, tunlab_artefacts, scenario.name).scenario(scenario)

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
            return str(excinfo.value)
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
        item.add_marker(pytest.mark.netns)
        item.add_marker(pytest.mark.tunlab_scenario)
        return [item]


def collect_file(file_path: Path, parent: pytest.Collector) -> ScenarioFile | None:
    """``pytest_collect_file``: scenario files the python plugin would not collect (not test_*.py)."""
    if not is_scenario_file(parent.config, file_path):
        return None
    if parent.session.isinitpath(file_path):
        return None  # the python plugin asks pytest_pycollect_makemodule for it: see make_module
    patterns = parent.config.getini("python_files")
    from _pytest.pathlib import fnmatch_ex

    if any(fnmatch_ex(p, file_path) for p in patterns):
        return None
    return ScenarioFile.from_parent(parent, path=file_path)


def make_module(module_path: Path, parent: pytest.Collector) -> ScenarioFile | None:
    """``pytest_pycollect_makemodule``: a scenario file named on the command line is a ScenarioFile."""
    if is_scenario_file(parent.config, module_path):
        return ScenarioFile.from_parent(parent, path=module_path)
    return None
