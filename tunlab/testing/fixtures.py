"""Fixtures of the tunlab plugin.

- ``tunlab_artefacts``: this test's artefact folder (a Path), kept on failure or with --tunlab-keep.
- ``tunlab_lab_factory``: ``factory(topology, **lab_kwargs) -> Lab``; every lab it built is torn down after
  the test, whatever the test did, and checked for leftovers.
- ``tunlab_lab``: one lab from ``@pytest.mark.tunlab_topology(topology, scope=..., **lab_kwargs)`` or from an
  indirect parameter (``@pytest.mark.parametrize("tunlab_lab", [topo], indirect=True)``).
- ``tunlab_checks``: the scenario checks (send, capture, expect; whole-chain flows) on ``tunlab_lab``.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Generator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tunlab.system.privileges import make_user_dir
from tunlab.testing import artefacts
from tunlab.testing.labs import LabFactory, TopologySpec
from tunlab.testing.options import safe_name

if TYPE_CHECKING:  # for annotations only: the lab (pyroute2) and the checks (scapy) load when a test uses them
    from tunlab.lab.lab import Lab
    from tunlab.testing.labchecks import LabChecks


def _fail_teardown(node: pytest.Item | None, problems: list[str]) -> None:
    if not problems:
        return
    if node is not None:
        node.stash.setdefault(artefacts.TEARDOWN_ERRORS_KEY, []).extend(problems)
    pytest.fail("\n".join(problems), pytrace=False)


@pytest.fixture
def tunlab_artefacts(request: pytest.FixtureRequest,
                     record_testsuite_property: Callable[[str, object], None]) -> Generator[Path, None, None]:
    """A folder for this test's artefacts: kept (and named in the report) if the test fails."""
    item = request.node
    item.stash[artefacts.RECORD_KEY] = record_testsuite_property
    folder = artefacts.make_test_folder(item)
    yield folder
    artefacts.finish_folder(item, folder, failed=artefacts.has_failed(item))


@pytest.fixture
def tunlab_lab_factory(request: pytest.FixtureRequest, tunlab_artefacts: Path) -> Generator[LabFactory, None, None]:
    """Build labs on demand: ``lab = tunlab_lab_factory(topology)``; all are torn down after the test."""
    settings = artefacts.settings(request.config)
    factory = LabFactory(backend=settings.backend, results_dir=tunlab_artefacts, hosts=settings.hosts)
    artefacts.on_failure(request.node, factory.snapshot)
    yield factory
    _fail_teardown(request.node, factory.close())


class ModuleLabs:
    """The labs shared by the tests of one module (``tunlab_topology(..., scope="module")``)."""

    def __init__(self, factory: LabFactory) -> None:
        self.factory = factory
        self._labs: dict[tuple[Any, ...], Any] = {}

    def get(self, spec: TopologySpec, lab_kwargs: dict[str, Any]) -> Lab:
        key = (spec if _hashable(spec) else id(spec), tuple(sorted((k, repr(v)) for k, v in lab_kwargs.items())))
        if key not in self._labs:
            self._labs[key] = self.factory(spec, **lab_kwargs)
        return self._labs[key]


def _hashable(value: Any) -> bool:
    try:
        hash(value)
    except TypeError:
        return False
    return True


@pytest.fixture(scope="module")
def tunlab_module_labs(request: pytest.FixtureRequest) -> Generator[ModuleLabs, None, None]:
    """Labs shared by a module's tests; their artefacts go to one folder per module."""
    settings = artefacts.settings(request.config)
    folder = settings.session_dir / f"{safe_name(request.node.nodeid)}--module"
    if folder.exists():
        shutil.rmtree(folder)
    make_user_dir(folder)
    shared = ModuleLabs(LabFactory(backend=settings.backend, results_dir=folder, hosts=settings.hosts))
    yield shared
    problems = shared.factory.close()
    failed = bool(request.node.stash.get(artefacts.MODULE_FAILED_KEY, False)) or bool(problems)
    if not (failed or settings.keep):
        shutil.rmtree(folder, ignore_errors=True)
    _fail_teardown(None, problems)


def _lab_request(request: pytest.FixtureRequest) -> tuple[TopologySpec, str, dict[str, Any]]:
    """(topology, scope, lab kwargs) from an indirect parameter or the closest tunlab_topology marker."""
    if hasattr(request, "param"):
        return request.param, "function", {}
    marker = request.node.get_closest_marker("tunlab_topology")
    if marker is None or not marker.args:
        pytest.fail("tunlab_lab needs a topology: add @pytest.mark.tunlab_topology(topology) to the test "
                    "(or pytestmark in its module), or parametrize tunlab_lab indirectly", pytrace=False)
    kwargs = dict(marker.kwargs)
    scope = kwargs.pop("scope", "function")
    if scope not in ("function", "module"):
        pytest.fail(f"tunlab_topology(scope={scope!r}): scope must be 'function' or 'module'", pytrace=False)
    return marker.args[0], scope, kwargs


@pytest.fixture
def tunlab_lab(request: pytest.FixtureRequest) -> Lab:
    """A lab that is up and ready for this test (or shared by the module, with scope='module')."""
    spec, scope, kwargs = _lab_request(request)
    item = request.node
    if scope == "module":
        shared: ModuleLabs = request.getfixturevalue("tunlab_module_labs")
        folder = shared.factory.results_dir
        artefacts.point_at(item, folder)
        item.stash[artefacts.RECORD_KEY] = request.getfixturevalue("record_testsuite_property")
        artefacts.on_failure(item, shared.factory.snapshot)

        def name_module_folder() -> None:
            if artefacts.has_failed(item) and folder.is_dir():
                artefacts.name_in_junit(item, folder)

        request.addfinalizer(name_module_folder)
        return shared.get(spec, kwargs)
    factory: LabFactory = request.getfixturevalue("tunlab_lab_factory")
    return factory(spec, **kwargs)


@pytest.fixture
def tunlab_checks(request: pytest.FixtureRequest, tunlab_lab: Lab,
                  tunlab_artefacts: Path) -> Generator[LabChecks, None, None]:
    """Scenario checks on ``tunlab_lab``: ``flows([Ping(), Udp(5000)])``, ``scenario(path)``, and
    ``capture()`` / ``send()`` / ``expect()`` / ``expect_none()``; failures raise with EXPECTED/RECEIVED."""
    from tunlab.testing.labchecks import LabChecks

    checks = LabChecks(tunlab_lab, tunlab_artefacts, request.node.name,
                       width=artefacts.report_width(request.config))
    yield checks
    if artefacts.has_failed(request.node):
        checks.save_captures()
