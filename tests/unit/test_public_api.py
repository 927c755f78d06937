"""The front door: ``from tunlab import ...`` is the public API, pinned here; importing it stays cheap; the
README and the shipped scenario/topology files import only from public modules."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

import tunlab

REPO = Path(__file__).resolve().parents[2]

#: changing this list is changing tunlab's public API: do it on purpose, with the README
PUBLIC = [
    "DescriptionError", "Endpoint", "Expect", "Lab", "Link", "NeedRoot", "NsBridge", "Path", "Ping",
    "QuietMininet", "Route", "Scenario", "ScenarioResult", "ServicePath", "Tcp", "Topology", "TopologyError", "TunlabError",
    "Udp", "Vnf", "__version__", "add_relay_chain", "linear_chain", "load_scenario", "load_topology",
    "run_scenario",
]
NEEDS_MININET = {"NsBridge", "QuietMininet"}
#: the modules a user may import from (everything else is internal and may move)
PUBLIC_MODULES = {"tunlab", "tunlab.relay"}


def test_all_is_pinned() -> None:
    assert sorted(tunlab.__all__) == sorted(PUBLIC)
    assert sorted(dir(tunlab)) == sorted(PUBLIC)


@pytest.mark.parametrize("name", sorted(set(PUBLIC) - NEEDS_MININET))
def test_every_public_name_resolves(name: str) -> None:
    assert getattr(tunlab, name) is not None


def test_public_names_are_the_real_objects() -> None:
    from tunlab.lab.lab import Lab
    from tunlab.model.flows import Ping
    from tunlab.model.topology import Topology
    from tunlab.run.runner import run_scenario

    assert (tunlab.Lab, tunlab.Ping, tunlab.Topology, tunlab.run_scenario) == (Lab, Ping, Topology, run_scenario)


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        tunlab.nope  # noqa: B018


def test_importing_tunlab_imports_nothing_heavy() -> None:
    code = ("import sys, tunlab; heavy = [m for m in ('tunlab.lab.lab', 'tunlab.model.topology', 'scapy', "
            "'pyroute2', 'rich', 'click') if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_package_is_typed() -> None:
    assert (Path(tunlab.__file__).parent / "py.typed").is_file()
    assert re.search(r'^tunlab = \[.*"py\.typed"', (REPO / "pyproject.toml").read_text(), re.M)


def _imported_modules(text: str) -> set[str]:
    return set(re.findall(r"^\s*from (tunlab[\w.]*) import", text, re.MULTILINE)) | \
        set(re.findall(r"^\s*import (tunlab[\w.]*)", text, re.MULTILINE))


def test_the_readme_imports_only_public_modules() -> None:
    blocks = re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), re.DOTALL)
    used = set().union(*(_imported_modules(b) for b in blocks))
    inline = set(re.findall(r"`from (tunlab[\w.]*) import", (REPO / "README.md").read_text()))
    assert used | inline, "the README shows no Python import"
    assert (used | inline) <= PUBLIC_MODULES, sorted((used | inline) - PUBLIC_MODULES)


@pytest.mark.parametrize("folder", ["scenarios", "topologies", "examples"])
def test_shipped_files_import_only_public_modules(folder: str) -> None:
    for f in sorted((REPO / folder).glob("*.py")):
        assert _imported_modules(f.read_text()) <= PUBLIC_MODULES, f


def test_a_file_written_for_older_module_paths_is_told_where_to_import_from(tmp_path: Path) -> None:
    from tunlab.errors import DescriptionError
    from tunlab.model.scenario import load_scenario

    f = tmp_path / "old.py"
    f.write_text('from tunlab.scenario import Ping\ntopology = "three_vnf"\ntraffic = [Ping()]\n')
    with pytest.raises(DescriptionError) as err:
        load_scenario(f)
    assert "line 1" in str(err.value) and "from tunlab import Ping" in str(err.value)
