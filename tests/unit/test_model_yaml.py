"""YAML topologies (tunlab.model.yamlfile): the shipped pairs give the same plan, errors name file, line,
column and field, the published JSON Schema is generated from the model and accepts what the loader
accepts; `tunlab graph` and `tunlab schema`."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from tunlab.errors import DescriptionError
from tunlab.model import load_scenario, load_topology
from tunlab.model.graph import graph_data, to_dot, to_mermaid
from tunlab.model.plan import build_plan
from tunlab.model.yamlfile import json_schema, load_yaml_topology

REPO = Path(__file__).resolve().parents[2]
TOPOLOGIES = REPO / "topologies"


@pytest.mark.parametrize("name", ["three_vnf", "fork", "linear"])
@pytest.mark.parametrize("params", [{}, {"transport": "tcp"}, {"datapath": "plain"}])
def test_each_shipped_pair_gives_the_same_plan(name: str, params: dict[str, str]) -> None:
    py = load_topology(str(TOPOLOGIES / f"{name}.py"), params)
    ya = load_topology(str(TOPOLOGIES / f"{name}.yaml"), params)
    assert ya.source == str(TOPOLOGIES / f"{name}.yaml")
    assert py == ya
    a, b = build_plan(py, "t0p1", "/run/tunlab/t0p1"), build_plan(ya, "t0p1", "/run/tunlab/t0p1")
    assert (a.nodes, a.links) == (b.nodes, b.links)


def test_every_shipped_python_topology_has_its_yaml_twin() -> None:
    assert {p.stem for p in TOPOLOGIES.glob("*.py")} == {p.stem for p in TOPOLOGIES.glob("*.yaml")}


def _write(tmp_path: Path, text: str) -> Path:
    f = tmp_path / "t.yaml"
    f.write_text(text)
    return f


BASE = """\
name: t
endpoints:
  - {name: a, overlay: 172.16.0.1}
  - {name: b, overlay: 172.16.0.2}
links:
  - {a: a, b: b, a_addr: 10.0.0.1/30, b_addr: 10.0.0.2/30}
paths:
  - nodes: [a, b]
"""


def test_a_minimal_file_loads(tmp_path: Path) -> None:
    t = load_yaml_topology(_write(tmp_path, BASE))
    assert [n.name for n in t.nodes] == ["a", "b"] and t.links[0].transport == "udp"


@pytest.mark.parametrize("text, expected", [
    (BASE.replace("overlay: 172.16.0.2", "overlay: 172.16.0.300"),
     ["line 4, column 5", "node 'b' field 'overlay'", "172.16.0.300"]),
    (BASE.replace("{a: a, b: b,", "{a: a, b: b, trasport: tcp,"),
     ["line 6, column 18", "'trasport' is not a field of Link", "did you mean 'transport'"]),
    (BASE.replace("  - {name: b, overlay: 172.16.0.2}\n", "  - {overlay: 172.16.0.2}\n"),
     ["line 4", "Endpoint needs name"]),
    (BASE.replace("paths:", "pathz:"), ["'pathz' is not a field of a topology", "did you mean 'paths'"]),
    (BASE + "  - nodes: [a, b\n", ["not valid YAML", "line"]),
    (BASE.replace("b_addr: 10.0.0.2/30", "b_addr: '${peer}'"), ["${peer} is not a parameter"]),
    ("- just\n- a list\n", ["a topology file is a mapping"]),
    (BASE.replace("endpoints:\n", "endpoints: 3\nx:\n"), ["'x' is not a field of a topology"]),
])
def test_mistakes_name_the_file_line_column_and_field(tmp_path: Path, text: str, expected: list[str]) -> None:
    f = _write(tmp_path, text)
    with pytest.raises(DescriptionError) as err:
        load_topology(str(f))
    message = str(err.value)
    assert message.startswith(str(f)), message
    for part in expected:
        assert part in message, message


def test_params_substitute_and_keep_their_type(tmp_path: Path) -> None:
    text = "params: {transport: udp, mtu: 1400}\nmtu: ${mtu}\n" + BASE.replace("b_addr: 10.0.0.2/30}",
                                                                                 "b_addr: 10.0.0.2/30, transport: '${transport}'}")
    f = _write(tmp_path, text)
    assert load_topology(str(f)).mtu == 1400
    assert load_topology(str(f), {"transport": "tcp"}).links[0].transport == "tcp"
    with pytest.raises(DescriptionError, match="takes no parameter n_vnfs"):
        load_topology(str(f), {"n_vnfs": 3})


def test_hooks_and_shaping_and_routes_are_expressible(tmp_path: Path) -> None:
    (tmp_path / "hooks.py").write_text("def keep(p):\n    return p\n")
    text = BASE.replace("  - {name: b, overlay: 172.16.0.2}\n",
                        "  - {name: b, overlay: 172.16.0.2}\nvnfs:\n  - {name: h, overlay: 172.16.1.1, kind: hook,"
                        " hook: 'hooks.py:keep'}\n  - name: k\n    overlay: 172.16.1.2\n"
                        "    routes: [{dst: 172.16.9.0/24, type: blackhole}]\n")
    text = text.replace("links:\n  - {a: a, b: b, a_addr: 10.0.0.1/30, b_addr: 10.0.0.2/30}",
                        "links:\n  - {a: a, b: h, a_addr: 10.0.0.1/30, b_addr: 10.0.0.2/30, shaping: {bw: 10}}\n"
                        "  - {a: h, b: k, a_addr: 10.0.0.5/30, b_addr: 10.0.0.6/30}\n"
                        "  - {a: k, b: b, a_addr: 10.0.0.9/30, b_addr: 10.0.0.10/30}")
    text = text.replace("  - nodes: [a, b]", "  - nodes: [a, h, k, b]")
    t = load_topology(str(_write(tmp_path, text)))
    assert dict(t.links[0].shaping) == {"bw": 10}
    assert t.vnfs[1].routes[0].type == "blackhole"
    plan = build_plan(t, "t0p2", "/run/tunlab/t0p2")
    assert f"{tmp_path}/hooks.py:keep" in " ".join(plan.node("h").relay_args)  # relative to the YAML file


def test_a_scenario_can_name_a_yaml_topology(tmp_path: Path) -> None:
    shutil.copy(TOPOLOGIES / "three_vnf.yaml", tmp_path / "chain.yaml")
    (tmp_path / "sc.py").write_text("from tunlab import Ping\ntopology = 'chain.yaml'\n"
                                    "params = {'transport': 'tcp'}\ntraffic = [Ping()]\n")
    sc = load_scenario(tmp_path / "sc.py")
    assert sc.topology.name == "three_vnf" and sc.topology.links[0].transport == "tcp"


def test_a_bare_name_finds_the_python_file_first() -> None:
    assert load_topology("three_vnf").source.endswith("three_vnf.py")


# ------------------------------------------------------------------------------------------------ schema


def test_the_published_schema_is_the_generated_one() -> None:
    published = json.loads((REPO / "docs" / "topology.schema.json").read_text())
    assert published == json_schema(), "regenerate: tunlab schema > docs/topology.schema.json"


def test_the_schema_is_valid_and_accepts_every_shipped_yaml() -> None:
    schema = json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    for f in TOPOLOGIES.glob("*.yaml"):
        data = yaml.safe_load(f.read_text())
        # the schema describes files after ${param} substitution (the loader's job): substitute defaults
        text = f.read_text()
        for k, v in (data.get("params") or {}).items():
            text = text.replace("${" + k + "}", str(v))
        jsonschema.validate(yaml.safe_load(text), schema)


def test_the_schema_rejects_an_unknown_field_and_a_wrong_enum() -> None:
    data = yaml.safe_load(BASE)
    bad_key = json.loads(json.dumps(data))
    bad_key["links"][0]["trasport"] = "tcp"
    bad_enum = json.loads(json.dumps(data))
    bad_enum["links"][0]["transport"] = "sctp"
    for bad in (bad_key, bad_enum):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, json_schema())


def test_the_schema_follows_the_model() -> None:
    link = json_schema()["$defs"]["Link"]
    assert link["properties"]["transport"] == {"enum": ["udp", "tcp"], "default": "udp"}
    assert set(link["required"]) == {"a", "b", "a_addr", "b_addr"}
    assert json_schema()["$defs"]["Vnf"]["properties"]["hook"] == {"anyOf": [{"type": "string"}, {"type": "null"}]}


# ------------------------------------------------------------------------------------------------- graph


def test_graph_data_and_both_renderings_show_every_node_link_and_path() -> None:
    g = graph_data(load_topology("fork"))
    dot, mermaid = to_dot(g), to_mermaid(g, {"fw_a": "dead"})
    for n in ("sender", "classifier", "fw_a", "fw_b", "rx_a", "rx_b"):
        assert f'"{n}"' in dot and f"n_{n}" in mermaid
    assert dot.count(" -- ") == 5 and mermaid.count("---|") == 5
    assert "sender > classifier > fw_b > rx_b (172.16.2.0/24)" in dot
    assert "class n_fw_a dead" in mermaid


@pytest.mark.skipif(shutil.which("dot") is None, reason="graphviz is not installed (setup installs it)")
@pytest.mark.parametrize("topology", ["fork", "three_vnf", "topologies/linear.yaml"])
def test_graphviz_renders_the_dot_output(topology: str) -> None:
    dot = subprocess.run([sys.executable, "-m", "tunlab", "graph", topology], cwd=REPO, capture_output=True,
                         text=True, check=True).stdout
    svg = subprocess.run(["dot", "-Tsvg"], input=dot, capture_output=True, text=True, check=True).stdout
    assert "<svg" in svg and "sender" in svg


def test_schema_command_prints_the_schema() -> None:
    out = subprocess.run([sys.executable, "-m", "tunlab", "schema"], capture_output=True, text=True,
                         check=True).stdout
    assert json.loads(out) == json_schema()


MERMAID_LINE = __import__("re").compile(
    r'^(flowchart LR'
    r'|  n_\w+\["[^"]*"\]'                     # an endpoint: a box
    r'|  n_\w+\("[^"]*"\)'                      # a VNF: rounded
    r'|  n_\w+ ---\|"[^"|]*"\| n_\w+'           # a link with its label
    r'|  classDef \w+ stroke:\w+,stroke-width:\d+px'
    r'|  class n_\w+ \w+'
    r'|  %%.*)$')


@pytest.mark.parametrize("topology", ["fork", "three_vnf", "topologies/linear.yaml"])
def test_mermaid_output_follows_the_flowchart_grammar(topology: str) -> None:
    g = graph_data(load_topology(topology))
    for state in (None, {n["name"]: "up" for n in g["nodes"]}):
        text = to_mermaid(g, state)
        bad = [ln for ln in text.splitlines() if not MERMAID_LINE.match(ln)]
        assert not bad, bad
        ids = {m for m in __import__("re").findall(r"n_\w+", text)}
        assert ids == {f"n_{n['name']}" for n in g["nodes"]}  # every edge and class names a declared node
