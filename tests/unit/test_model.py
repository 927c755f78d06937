"""The description and its validation: every mistake is reported naming the node/link and the field."""

from __future__ import annotations

import re

import pytest

from tunlab.errors import DescriptionError
from tunlab.model.topology import Endpoint, Link, Path, Route, Topology, Vnf, linear_chain


def two_hop(**over: object) -> dict[str, object]:
    kw: dict[str, object] = dict(
        name="t",
        endpoints=(Endpoint("s", "172.16.0.1"), Endpoint("r", "172.16.0.2")),
        vnfs=(Vnf("v", "172.16.0.3"),),
        links=(Link("s", "v", "10.0.0.1/30", "10.0.0.2/30"), Link("v", "r", "10.0.0.5/30", "10.0.0.6/30")),
        paths=(Path(("s", "v", "r")),),
    )
    kw.update(over)
    return kw


def raises(match: str, **over: object) -> DescriptionError:
    with pytest.raises(DescriptionError, match=match) as info:
        Topology(**two_hop(**over))  # type: ignore[arg-type]
    return info.value


def test_a_valid_description_builds_and_derives_routes() -> None:
    t = Topology(**two_hop())  # type: ignore[arg-type]
    assert [n.name for n in t.nodes] == ["s", "r", "v"]
    assert t.routes_for("v") == {"172.16.0.1/32": "s", "172.16.0.2/32": "r"}
    assert t.routes_for("s") == {"172.16.0.3/32": "v", "172.16.0.2/32": "v"}


def test_lists_are_accepted_and_stored_as_tuples() -> None:
    kw = two_hop()
    t = Topology(**{k: list(v) if isinstance(v, tuple) else v for k, v in kw.items()})  # type: ignore[arg-type]
    assert isinstance(t.links, tuple) and isinstance(t.paths[0].nodes, tuple)


@pytest.mark.parametrize(("over", "where", "fld"), [
    (dict(endpoints=(Endpoint("s", "172.16.0.1"), Endpoint("r", "172.16.0.1"))), "node 'r'", "overlay"),
    (dict(endpoints=(Endpoint("s", "172.16.0.1"), Endpoint("r", "192.168.0.2"))), "node 'r'", "overlay"),
    (dict(endpoints=(Endpoint("s", "172.16.0.1"), Endpoint("v", "172.16.0.9"))), "node 'v'", "name"),
    (dict(links=(Link("s", "v", "10.0.0.1/30", "10.0.0.2/30"), Link("v", "x", "10.0.0.5/30", "10.0.0.6/30"))),
     "link 'v-x'", "b"),
    (dict(links=(Link("s", "v", "10.0.0.1/30", "10.0.0.2/30"), Link("v", "r", "10.0.0.2/30", "10.0.0.1/30"))),
     "link 'v-r'", "a_addr"),
    (dict(links=(Link("s", "v", "10.0.0.1/30", "10.0.0.2/30"), Link("v", "s", "10.0.0.5/30", "10.0.0.6/30"))),
     "link 'v-s'", "b"),
    (dict(links=(Link("s", "v", "10.0.0.1/29", "10.0.0.2/29"), Link("v", "r", "10.0.0.5/30", "10.0.0.6/30"))),
     "link 'v-r'", "a_addr"),
    (dict(links=(Link("s", "v", "172.16.9.1/30", "172.16.9.2/30"), Link("v", "r", "10.0.0.5/30", "10.0.0.6/30"))),
     "link 's-v'", "a_addr"),
    (dict(links=(Link("s", "v", "10.0.0.1/30", "10.0.0.2/30"),
                 Link("v", "r", "10.0.0.5/30", "10.0.0.6/30", "tcp"))), "node 'v'", "transport"),
    (dict(links=(Link("s", "v", "10.0.0.1/30", "10.0.0.2/30"),)), "paths\\[0\\]", "nodes"),
    (dict(paths=(Path(("s", "v")),)), "paths\\[0\\]", "nodes"),
    (dict(paths=(Path(("v", "r")),)), "paths\\[0\\]", "nodes"),
    (dict(paths=()), "topology", "paths"),
    (dict(vnfs=(Vnf("v", "172.16.0.3"), Vnf("w", "172.16.0.4"))), "node 'w'", "name"),
    (dict(overlay_net="10.0.0.0/8"), "node 's'", "overlay"),
    (dict(overlay_net="127.0.0.0/8"), "topology", "overlay_net"),
    (dict(mtu=100), "topology", "mtu"),
    (dict(name="a b"), "topology", "name"),
    (dict(endpoints=(Endpoint("s", "172.16.0.1"),)), "topology", "endpoints"),
])
def test_mistakes_in_the_whole_name_the_node_or_link_and_the_field(over: dict[str, object], where: str,
                                                                   fld: str) -> None:
    err = raises(f"^{where} field '{fld}': ", **over)
    assert err.hint, f"no fix suggested for: {err}"


def test_conflicting_paths_name_both_paths() -> None:
    eps = (Endpoint("s", "172.16.0.1"), Endpoint("r", "172.16.0.2"))
    vnfs = (Vnf("a", "172.16.0.3"), Vnf("b", "172.16.0.4"))
    links = (Link("s", "a", "10.0.0.1/30", "10.0.0.2/30"), Link("s", "b", "10.0.0.5/30", "10.0.0.6/30"),
             Link("a", "r", "10.0.0.9/30", "10.0.0.10/30"), Link("b", "r", "10.0.0.13/30", "10.0.0.14/30"))
    with pytest.raises(DescriptionError, match=r"paths\[1\] field 'nodes': node 's' would send 172.16.0.2/32 "
                                               r"to 'a' \(paths\[0\]\) and to 'b' \(paths\[1\]\)"):
        Topology("t", eps, vnfs, links, (Path(("s", "a", "r")), Path(("s", "b", "r"))))


@pytest.mark.parametrize(("kw", "fld"), [
    (dict(name="Vnf1"), "name"),
    (dict(name="a" * 17), "name"),
    (dict(overlay="172.16.0.300"), "overlay"),
    (dict(kind="dpdk"), "kind"),
    (dict(kind="hook"), "hook"),
    (dict(hook="x.py:f"), "hook"),
    (dict(nft="   "), "nft"),
    (dict(routes=(Route("10.9.0.0/33"),)), r"routes\[0\].dst"),
    (dict(routes=(Route("172.16.9.0/24", "drop"),)), r"routes\[0\].type"),
    (dict(routes=("172.16.9.0/24",)), r"routes\[0\]"),
    (dict(kind="hook", hook="no-colon"), "hook"),
    (dict(kind="hook", hook=lambda p: p), "hook"),
])
def test_vnf_mistakes_name_the_field(kw: dict[str, object], fld: str) -> None:
    args: dict[str, object] = dict(name="v", overlay="172.16.0.3")
    args.update(kw)
    with pytest.raises(DescriptionError, match=rf"node '.*' field '{fld}'") as info:
        Topology(**two_hop(vnfs=(Vnf(**args),)))  # type: ignore[arg-type]
    assert info.value.field and fld.split("\\")[0] in info.value.field


@pytest.mark.parametrize(("kw", "fld"), [
    (dict(a_addr="10.0.0.1"), "a_addr"),
    (dict(a_addr="10.0.0.0/30"), "a_addr"),
    (dict(b_addr="10.0.1.2/30"), "b_addr"),
    (dict(b_addr="10.0.0.1/30"), "b_addr"),
    (dict(transport="sctp"), "transport"),
    (dict(a_port=0), "a_port"),
    (dict(b_port=70000), "b_port"),
    (dict(b="s"), "b"),
])
def test_link_mistakes_name_the_link_and_field(kw: dict[str, object], fld: str) -> None:
    args: dict[str, object] = dict(a="s", b="v", a_addr="10.0.0.1/30", b_addr="10.0.0.2/30")
    args.update(kw)
    with pytest.raises(DescriptionError, match=rf"^link '.*' field '{fld}': "):
        Link(**args)  # type: ignore[arg-type]


def test_hook_specs_are_checked_without_running_them(tmp_path: object) -> None:
    import pathlib

    d = pathlib.Path(str(tmp_path))
    (d / "hooks.py").write_text("def tag(packet):\n    return packet\n")
    ok = Vnf("v", "172.16.0.3", kind="hook", hook=str(d / "hooks.py") + ":tag")
    Topology(**two_hop(vnfs=(ok,)))  # type: ignore[arg-type]
    missing = Vnf("v", "172.16.0.3", kind="hook", hook=str(d / "hooks.py") + ":nope")
    with pytest.raises(DescriptionError, match="field 'hook': .* defines no top-level function 'nope'"):
        Topology(**two_hop(vnfs=(missing,)))  # type: ignore[arg-type]
    nofile = Vnf("v", "172.16.0.3", kind="hook", hook=str(d / "absent.py") + ":tag")
    with pytest.raises(DescriptionError, match="field 'hook': cannot read"):
        Topology(**two_hop(vnfs=(nofile,)))  # type: ignore[arg-type]
    nomod = Vnf("v", "172.16.0.3", kind="hook", hook="no_such_pkg_xyz.mod:f")
    with pytest.raises(DescriptionError, match="field 'hook': cannot import module"):
        Topology(**two_hop(vnfs=(nomod,)))  # type: ignore[arg-type]


def test_linear_chain_addresses_and_paths() -> None:
    t = linear_chain(100, "tcp")
    assert len(t.vnfs) == 100 and len(t.links) == 101
    assert t.paths[0].nodes[0] == "sender" and t.paths[0].nodes[-1] == "receiver"
    assert {lk.transport for lk in t.links} == {"tcp"}
    subnets = {lk.a_addr.rsplit(".", 1)[0] + lk.a_addr for lk in t.links}
    assert len(subnets) == 101
    assert all(re.match(r"^172\.16\.\d+\.\d+$", n.overlay) for n in t.nodes)
    assert linear_chain(0).paths[0].nodes == ("sender", "receiver")
    with pytest.raises(DescriptionError, match="n_vnfs"):
        linear_chain(-1)


def test_one_relay_listens_on_one_port() -> None:
    links = (Link("s", "v", "10.0.0.1/30", "10.0.0.2/30", b_port=5000),
             Link("v", "r", "10.0.0.5/30", "10.0.0.6/30", a_port=5001))
    raises(r"^node 'v' field 'port': its links listen on different ports \(5000, 5001\)", links=links)
