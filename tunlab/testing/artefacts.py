"""Per-test artefact folders: created for tests that use a lab, kept when the test failed (or with
``--tunlab-keep``), removed otherwise; named in the failure report and in JUnit XML (a test-suite property, and the failure text).

The keep/remove decision needs the test's outcome inside a fixture's teardown: the
``pytest_runtest_makereport`` wrapper (hooks.py) stores each phase's report in ``item.stash``.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from tunlab.system.privileges import chown_to_invoking_user, make_user_dir
from tunlab.testing.options import Settings, safe_name

SETTINGS_KEY = pytest.StashKey[Settings]()
REPORTS_KEY = pytest.StashKey[dict[str, pytest.TestReport]]()
FOLDERS_KEY = pytest.StashKey[list[Path]]()      # artefact folders this test can point at (own, module lab)
TEARDOWN_ERRORS_KEY = pytest.StashKey[list[str]]()  # leak/teardown problems found by our fixtures
MODULE_FAILED_KEY = pytest.StashKey[bool]()        # on a Module node: one of its tests failed
SNAPSHOTS_KEY = pytest.StashKey[list[Callable[[], None]]]()  # save-evidence-now callbacks (labs still up)
RECORD_KEY = pytest.StashKey[Callable[[str, object], None]]()  # record_testsuite_property of the session

PROPERTY = "tunlab_artefacts"
SECTION = "tunlab artefacts"


def settings(config: pytest.Config) -> Settings:
    value = config.stash.get(SETTINGS_KEY, None)
    if value is None:
        value = config.stash[SETTINGS_KEY] = Settings.from_config(config)
    return value


def has_failed(item: pytest.Item) -> bool:
    """Did this test fail so far: a failed setup or call, or a teardown problem one of our fixtures found."""
    reports = item.stash.get(REPORTS_KEY, {})
    return any(r.failed for r in reports.values()) or bool(item.stash.get(TEARDOWN_ERRORS_KEY, []))


def point_at(item: pytest.Item, folder: Path) -> None:
    """Make ``folder`` one of the folders a failure report of ``item`` names."""
    folders = item.stash.setdefault(FOLDERS_KEY, [])
    if folder not in folders:
        folders.append(folder)


def describe(folders: list[Path], per_dir: int = 6) -> str:
    """``kept in FOLDER`` and what it holds: files, and folders with a count and their first names."""
    lines = []
    for folder in folders:
        lines.append(f"kept in {folder}")
        if not folder.is_dir():
            continue
        for entry in sorted(folder.iterdir(), key=lambda p: (p.is_dir(), p.name)):  # files, then folders
            if entry.is_dir():
                names = sorted(str(p.relative_to(entry)) for p in entry.rglob("*") if p.is_file())
                more = " ..." if len(names) > per_dir else ""
                lines.append(f"  {entry.name}/ ({len(names)}): {' '.join(names[:per_dir])}{more}")
            else:
                lines.append(f"  {entry.name}")
    return "\n".join(lines)


def on_failure(item: pytest.Item, callback: Callable[[], None]) -> None:
    """Call ``callback`` when a phase of ``item`` fails, before the failure report names the folders."""
    item.stash.setdefault(SNAPSHOTS_KEY, []).append(callback)


def make_test_folder(item: pytest.Item) -> Path:
    """Create and return this test's own artefact folder (unique per run, xdist worker and test id)."""
    folder = settings(item.config).session_dir / safe_name(item.nodeid)
    if folder.exists():  # a rerun of the same id in the same session (e.g. pytest-rerunfailures)
        shutil.rmtree(folder)
    make_user_dir(folder)
    point_at(item, folder)
    return folder


def report_width(config: pytest.Config) -> int:
    """The width for failure reports: pytest's terminal width, less the ``E   `` pytest puts before them."""
    try:
        width = config.get_terminal_writer().fullwidth
    except Exception:  # noqa: BLE001 - no terminal reporter (an xdist worker, -p no:terminal)
        width = shutil.get_terminal_size().columns
    return max(60, width - 4)


def name_in_junit(item: pytest.Item, folder: Path) -> None:
    """Name a kept folder in JUnit XML as a property of the test suite (``tunlab_artefacts:<test id>``): the
    JUnit schema allows <properties> only there, not in a <testcase>. The failure text names it too."""
    record = item.stash.get(RECORD_KEY, None)
    if record is not None:
        record(f"{PROPERTY}:{item.nodeid}", str(folder))


def finish_folder(item: pytest.Item, folder: Path, *, failed: bool) -> bool:
    """Keep (and give to the sudo user) or remove ``folder``; returns whether it was kept."""
    if failed or settings(item.config).keep:
        chown_to_invoking_user(folder)
        name_in_junit(item, folder)
        return True
    shutil.rmtree(folder, ignore_errors=True)
    return False


def write_failure(folder: Path, report: pytest.TestReport) -> None:
    """Save the failure text next to the pcaps so the folder stands on its own (CI artefact uploads)."""
    if folder.is_dir() and not folder.is_symlink():
        fd = os.open(folder / "failure.txt", os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        with open(fd, "a", encoding="utf-8") as fh:
            fh.write(f"== {report.nodeid} ({report.when}) ==\n{report.longreprtext}\n")


def remove_empty_session_dir(config: pytest.Config) -> None:
    value = config.stash.get(SETTINGS_KEY, None)
    if value is None:
        return
    try:
        value.session_dir.rmdir()  # only when empty
    except OSError:
        chown_to_invoking_user(value.session_dir)
