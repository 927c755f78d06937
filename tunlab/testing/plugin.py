"""The tunlab pytest plugin, registered through the ``pytest11`` entry point: installing tunlab is enough.

- markers ``tunlab_netns`` / ``tunlab_mininet`` (aliases ``netns`` / ``mininet``; skipped with a one-line
  reason when the machine cannot run them) and ``tunlab_topology`` (which takes a topology function alone);
  options ``--tunlab-keep``, ``--tunlab-backend``, ``--tunlab-results``; a report header line saying whether
  lab tests can run here;
- fixtures ``tunlab_lab``, ``tunlab_lab_factory``, ``tunlab_module_labs``, ``tunlab_checks``,
  ``tunlab_artefacts``; scenario files collected as tests from the folders named by the
  ``tunlab_scenario_dirs`` ini key (none by default);
- per-test artefact folders (pcaps of every link, relay logs, EXPECTED/RECEIVED) kept for failing tests;
- a leak check after every lab.

The parts live in ``tunlab/testing/``; this module only gathers them (pytest registers the hooks and
fixtures found in a plugin module's namespace).
"""

from __future__ import annotations

from tunlab.testing.fixtures import (  # noqa: F401  (fixtures, registered by name)
    tunlab_artefacts,
    tunlab_checks,
    tunlab_lab,
    tunlab_lab_factory,
    tunlab_module_labs,
)
from tunlab.testing.gating import netns_unavailable_reason  # noqa: F401  (public: the skip decision)
from tunlab.testing.hooks import (  # noqa: F401  (hooks, registered by name)
    pytest_addoption,
    pytest_collect_file,
    pytest_collection_modifyitems,
    pytest_configure,
    pytest_configure_node,
    pytest_make_collect_report,
    pytest_pycollect_makemodule,
    pytest_report_header,
    pytest_runtest_makereport,
    pytest_unconfigure,
)
