"""The README's Python examples run as written: a scenario file is loaded and its probes built, the pytest
example is run with stand-in fixtures that build its flows against its topology (so a destination no path
carries fails here), and the lab examples, which need root or Mininet, are compiled and their imports
checked against tunlab's public names."""

from __future__ import annotations

import ast
import re
import textwrap
from pathlib import Path
from typing import Any

import pytest

import tunlab

ROOT = Path(__file__).resolve().parents[2]
BLOCKS = [textwrap.dedent(b) for b in re.findall(r"^ *```python\n(.*?)^ *```", (ROOT / "README.md").read_text(),
                                                 re.S | re.M)]


def kind(block: str) -> str:
    if re.search(r"^traffic\s*=", block, re.M):
        return "scenario"
    if "def test_" in block:
        return "pytest"
    return "lab"


def test_the_readme_has_each_kind_of_example() -> None:
    assert {kind(b) for b in BLOCKS} == {"scenario", "pytest", "lab"}


@pytest.mark.parametrize("block", BLOCKS, ids=[f"block{i}-{kind(b)}" for i, b in enumerate(BLOCKS)])
def test_readme_block_imports_only_public_names(block: str) -> None:
    tree = ast.parse(block)  # compiles as written
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "tunlab":
            for alias in node.names:
                assert alias.name in tunlab.__all__, f"README imports {alias.name} from tunlab, which has no such name"


@pytest.mark.parametrize("block", [b for b in BLOCKS if kind(b) == "scenario"])
def test_readme_scenario_loads_and_builds_its_probes(block: str, tmp_path: Path) -> None:
    from tunlab.model.scenario import build_probes, load_scenario

    path = tmp_path / "readme_scenario.py"
    path.write_text(block)
    sc = load_scenario(path)  # builds every probe too: a destination no path carries fails here
    assert len(build_probes(sc)) == sum(f.count for f in sc.traffic)


class _Node:
    def __init__(self, name: str, overlay: str) -> None:
        self.name, self.overlay_ip = name, overlay
        self.commands: list[list[str]] = []

    def cmd_raises(self, argv: list[str]) -> str:
        self.commands.append(list(argv))
        return ""


class _Lab:
    def __init__(self, topology: Any) -> None:
        self.topology = topology
        self.nodes = {n.name: _Node(n.name, n.overlay) for n in topology.nodes}

    def node(self, name: str) -> _Node:
        return self.nodes[name]


class _Checks:
    """Stands in for ``tunlab_checks``: builds the flows' probes on the lab's topology (no packets sent)."""

    def __init__(self, lab: _Lab) -> None:
        self.lab = lab
        self.probes: list[Any] = []

    def flows(self, traffic: list[Any], **kw: Any) -> None:
        from tunlab.model.scenario import Scenario, build_probes

        first = self.lab.topology.paths[0].nodes
        sc = Scenario(name="readme", source="README.md", topology=self.lab.topology, traffic=tuple(traffic),
                      src=kw.get("src") or first[0], dst=kw.get("dst") or first[-1])
        self.probes += build_probes(sc)


@pytest.mark.parametrize("block", [b for b in BLOCKS if kind(b) == "pytest"])
def test_readme_pytest_example_runs_against_its_topology(block: str) -> None:
    from tunlab.model.topofile import resolve_topology

    namespace: dict[str, Any] = {}
    exec(compile(block, "README.md", "exec"), namespace)  # noqa: S102 - the README's own example
    tests = [v for k, v in namespace.items() if k.startswith("test_") and callable(v)]
    assert tests
    for test in tests:
        marks = {m.name: m for m in getattr(test, "pytestmark", [])}
        assert "netns" in marks and "tunlab_topology" in marks
        mark = marks["tunlab_topology"]
        lab = _Lab(resolve_topology(mark.args[0], mark.kwargs.get("params")))
        checks = _Checks(lab)
        test(lab, checks)
        assert checks.probes
        for planned in checks.probes:  # every flow goes somewhere along a path of the topology
            assert planned.nodes[0] == "sender"
            if planned.probe.expect.dropped_at:
                assert planned.probe.expect.dropped_at in planned.nodes
