"""The folders are the layers: every import inside tunlab goes down (or stays in its own package), the relay
imports nothing of tunlab but its errors, and no module imports itself back through others.

The walk reads the source (``ast``), so it sees every runtime import, lazy ones inside functions included;
imports under ``if TYPE_CHECKING:`` are for type checkers only and are skipped. The layers, bottom up, are
those of docs/ARCHITECTURE.md:

    errors < relay, system < model < lab, traffic < verdict < run < cli, testing < tunlab (front door)

Packages of the same layer do not import each other (lab does not know traffic, relay does not know system).
"""

from __future__ import annotations

import ast
import functools
from collections.abc import Iterator
from pathlib import Path

import pytest

import tunlab

ROOT = Path(tunlab.__file__).resolve().parent

#: top-level unit of the package -> layer (higher may import lower)
LAYERS = {
    "tunlab.errors": 0,
    "tunlab.relay": 1,
    "tunlab.system": 1,
    "tunlab.model": 2,
    "tunlab.lab": 3,
    "tunlab.traffic": 3,
    "tunlab.verdict": 4,
    "tunlab.run": 5,
    "tunlab.cli": 6,
    "tunlab.testing": 6,
    "tunlab": 7,            # the front door (tunlab/__init__.py) and tunlab/__main__.py
    "tunlab.__main__": 7,
}
#: the relay is a component of its own: it may import these and itself, nothing else of tunlab
RELAY_MAY_IMPORT = {"tunlab.errors"}


def module_name(path: Path, root: Path, top: str) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join([top, *parts])


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _runtime_nodes(tree: ast.AST) -> Iterator[ast.AST]:
    """Every node except what sits under ``if TYPE_CHECKING:``."""
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child.test):
                stack.extend(child.orelse)
                continue
            stack.append(child)


def imports_of(path: Path, name: str, modules: set[str], top: str, source: str | None = None) -> set[str]:
    """The tunlab modules ``name`` (at ``path``; its text, or ``source``) imports at run time."""
    is_pkg = path.name == "__init__.py"
    out: set[str] = set()
    text = path.read_text() if source is None else source
    for node in _runtime_nodes(ast.parse(text, str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_pkg else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            # `from pkg import sub` imports the submodule when there is one
            targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in modules else mod for a in node.names]
        for t in targets:
            if t == top or t.startswith(top + "."):
                while t not in modules and "." in t:
                    t = t.rsplit(".", 1)[0]
                if t != name:
                    out.add(t)
    return out


def graph(root: Path, top: str = "tunlab", planted: dict[str, str] | None = None) -> dict[str, set[str]]:
    """Module -> the modules it imports; ``planted`` appends text to files (relative paths), for tests."""
    files = {module_name(p, root, top): p for p in root.rglob("*.py") if "__pycache__" not in p.parts}
    names = set(files)
    extra = {module_name(root / rel, root, top): text for rel, text in (planted or {}).items()}
    return {name: imports_of(path, name, names, top, path.read_text() + "\n" + extra[name] if name in extra else None)
            for name, path in files.items()}


def unit_of(module: str, layers: dict[str, int]) -> str:
    """The longest key of ``layers`` that ``module`` is or lies in."""
    best = ""
    for key in layers:
        if (module == key or module.startswith(key + ".")) and len(key) > len(best):
            best = key
    return best


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on: set[str] = set()
    stack: list[str] = []
    out: list[list[str]] = []
    counter = 0
    for start in sorted(g):
        if start in index:
            continue
        work = [(start, iter(sorted(g[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on.add(start)
        while work:
            v, it = work[-1]
            for w in it:
                if w not in g:
                    continue
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(g[w]))))
                    break
                if w in on:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on.discard(w)
                        comp.append(w)
                        if w == v:
                            break
                    if len(comp) > 1:
                        out.append(sorted(comp))
    return out


def layer_problems(g: dict[str, set[str]], layers: dict[str, int] = LAYERS,
                   relay: str = "tunlab.relay", relay_may: set[str] = RELAY_MAY_IMPORT) -> list[str]:
    problems = []
    for src, targets in sorted(g.items()):
        su = unit_of(src, layers)
        if not su:
            problems.append(f"{src} is in no layer: add its package to LAYERS and docs/ARCHITECTURE.md")
            continue
        for dst in sorted(targets):
            du = unit_of(dst, layers)
            if su == du:
                continue
            if su == relay and du not in relay_may:
                problems.append(f"{src} -> {dst}: the relay imports nothing of tunlab but {sorted(relay_may)}")
            elif layers[du] > layers[su]:
                problems.append(f"{src} -> {dst}: upward ({su} is layer {layers[su]}, {du} is layer {layers[du]})")
            elif layers[du] == layers[su]:
                problems.append(f"{src} -> {dst}: sideways ({su} and {du} are both layer {layers[su]})")
    return problems


# ------------------------------------------------------------------------------------------------- tests


@functools.lru_cache(maxsize=1)
def tree() -> dict[str, set[str]]:
    return graph(ROOT)



def test_every_import_goes_down_a_layer() -> None:
    problems = layer_problems(tree())
    assert not problems, "\n".join(problems)


def test_no_import_cycle() -> None:
    found = cycles(tree())
    assert not found, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_the_walk_sees_lazy_imports_and_skips_type_checking_ones() -> None:
    g = tree()
    assert "tunlab.lab.lab" in g["tunlab.run.runner"]        # imported inside run_scenario()
    assert "tunlab.lab.relays" in g["tunlab.lab.lab"]
    assert "tunlab.lab.backends.base" not in g["tunlab.lab.relays"]  # TYPE_CHECKING only
    assert g["tunlab.relay.fast.pumps"] >= {"tunlab.relay.fast.encap", "tunlab.relay.fast.gro"}


@pytest.mark.parametrize("planted, expected", [
    # the cycle the old tree had: the scenario description calling back into the runner
    ({"model/scenario.py": "def _back():\n    from tunlab.run.runner import run_scenario\n"}, "upward"),
    ({"relay/config.py": "from tunlab.model import names as _n\n"}, "the relay imports nothing"),
    ({"traffic/inject.py": "from tunlab.lab.ledger import Ledger as _L\n"}, "sideways"),
])
def test_a_planted_wrong_import_is_found(planted: dict[str, str], expected: str) -> None:
    problems = layer_problems(graph(ROOT, planted=planted))
    assert any(expected in p for p in problems), problems


def test_a_planted_cycle_is_found() -> None:
    found = cycles(graph(ROOT, planted={
        "model/names.py": "def _x():\n    from tunlab.model import plan\n",   # plan imports names
    }))
    assert ["tunlab.model.names", "tunlab.model.plan"] in found, found


def test_no_module_is_outside_the_layers() -> None:
    assert all(unit_of(m, LAYERS) for m in tree())
