"""Topology files: the convention, parameters, and errors that name the file."""

from __future__ import annotations

from pathlib import Path

import pytest

from tunlab.errors import DescriptionError
from tunlab.model.topology import Topology
from tunlab.model.topofile import load_topology, parse_params


@pytest.mark.parametrize("name", ["linear", "three_vnf", "fork"])
def test_shipped_topologies_load(name: str) -> None:
    t = load_topology(name)
    assert isinstance(t, Topology) and t.source and t.source.endswith(f"{name}.py")


def test_linear_takes_parameters() -> None:
    t = load_topology("linear", {"n_vnfs": 7, "transport": "tcp"})
    assert len(t.vnfs) == 7 and t.links[0].transport == "tcp"


def test_fork_classifier_chooses_by_prefix() -> None:
    r = load_topology("fork").routes_for("classifier")
    assert r["172.16.1.0/24"] == "fw_a" and r["172.16.2.0/24"] == "fw_b"


def test_parse_params_converts_values() -> None:
    assert parse_params(["n=5", "x=1.5", "t=tcp", "b=true"]) == {"n": 5, "x": 1.5, "t": "tcp", "b": True}
    with pytest.raises(DescriptionError, match="--param"):
        parse_params(["nonsense"])


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "topo.py"
    p.write_text(text)
    return p


def test_a_mistake_inside_a_file_names_the_file_node_and_field(tmp_path: Path) -> None:
    p = write(tmp_path, "from tunlab.model.topology import *\n"
                        "topology = linear_chain(2, vnf=lambda i, n, a: Vnf(n, a, nft=''))\n")
    with pytest.raises(DescriptionError) as info:
        load_topology(str(p))
    assert str(info.value).startswith(f"{p}, node 'vnf1' field 'nft': ")


def test_a_mistake_in_a_topology_function_names_the_file(tmp_path: Path) -> None:
    p = write(tmp_path, "from tunlab.model.topology import *\n"
                        "def topology(n=1):\n    return linear_chain(2, 'quic')\n")
    with pytest.raises(DescriptionError, match=rf"^{p}, link 'sender-vnf1' field 'transport': 'quic'"):
        load_topology(str(p))


@pytest.mark.parametrize(("text", "match"), [
    ("x = 1\n", "defines no 'topology'"),
    ("topology = 3\n", "'topology' is a int"),
    ("def topology(:\n", "line 1: "),
    ("import no_such_module_xyz\n", "line 1: ModuleNotFoundError"),
])
def test_broken_files_are_one_line_errors_naming_the_file(tmp_path: Path, text: str, match: str) -> None:
    p = write(tmp_path, text)
    with pytest.raises(DescriptionError, match=match) as info:
        load_topology(str(p))
    assert str(info.value).startswith(str(p)) and "\n" not in str(info.value)


def test_unknown_parameters_and_names(tmp_path: Path) -> None:
    with pytest.raises(DescriptionError, match="takes no parameter colour"):
        load_topology("linear", {"colour": "red"})
    with pytest.raises(DescriptionError, match="no topology named 'nope'.*known: .*linear"):
        load_topology("nope")
    with pytest.raises(DescriptionError, match="no such topology file"):
        load_topology(str(tmp_path / "absent.py"))
