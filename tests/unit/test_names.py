"""Run ids and names: length limit, the run id in every name, no collisions between runs."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tunlab.model import names
from tunlab.errors import TunlabError
from tunlab.lab.ledger import Ledger
from tunlab.model.topology import linear_chain
from tunlab.model.plan import build_plan, collapse_routes
from tunlab.model.topofile import load_topology


def test_run_ids_are_short_and_well_formed() -> None:
    ids = {names.new_run_id() for _ in range(2000)}
    assert all(names.is_run_id(i) and len(i) == 4 and i[0].isalpha() for i in ids)
    assert len(ids) > 1990  # 1.2 million possible ids


def test_interface_names_fit_15_characters_even_for_big_chains() -> None:
    plan = build_plan(linear_chain(300), "zzzz", "/run/tunlab/zzzz")
    ifnames = {i.ifname for n in plan.nodes for i in n.ifaces} | {plan.nodes[0].overlay_dev}
    assert max(len(n) for n in ifnames) <= 15
    assert len(ifnames) == 2 * 301 + 1


def test_check_ifname_rejects_long_names() -> None:
    with pytest.raises(TunlabError, match="at most 15"):
        names.check_ifname("x" * 16)
    with pytest.raises(TunlabError):
        names.check_ifname("a b")


@pytest.mark.parametrize("topo", ["linear", "three_vnf", "fork"])
def test_every_name_carries_the_run_id_and_two_runs_share_none(topo: str) -> None:
    t = load_topology(topo)
    p1, p2 = build_plan(t, "abcd", "/r/abcd"), build_plan(t, "abce", "/r/abce")

    def all_names(p: object) -> set[str]:
        out: set[str] = set()
        for n in p.nodes:  # type: ignore[attr-defined]
            out |= {n.netns, n.overlay_dev, *(i.ifname for i in n.ifaces)}
        return out

    n1, n2 = all_names(p1), all_names(p2)
    assert all(names.owned_by("abcd", n) for n in n1)
    assert not any(names.owned_by("abcd", n) for n in n2)
    assert not n1 & n2


def test_run_id_reservation_never_hands_out_an_existing_id(tmp_path: Path) -> None:
    a = Ledger.create({}, root=tmp_path, run_id="aaaa")
    with pytest.raises(TunlabError, match="already exists"):
        Ledger.create({}, root=tmp_path, run_id="aaaa")
    got = {Ledger.create({}, root=tmp_path).run_id for _ in range(50)} | {a.run_id}
    assert len(got) == 51 and len(list(tmp_path.iterdir())) == 51


def test_the_longest_generated_names_fit() -> None:
    assert len(names.veth_name("zzzz", 999999, "b")) == 15
    assert len(names.tun_name("zzzz")) <= 15


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.tuples(st.integers(0, 4095), st.sampled_from([32, 32, 32, 31, 30, 28, 24])),
                       st.sampled_from(["up", "down"]), min_size=1, max_size=40))
def test_collapsed_relay_routes_cover_exactly_the_same_addresses(raw: dict[tuple[int, int], str]) -> None:
    routes = {str(ipaddress.IPv4Network(((172 << 24) + off, plen), strict=False)): peer
              for (off, plen), peer in raw.items()}
    by_peer: dict[str, list[ipaddress.IPv4Network]] = {}
    for prefix, peer in routes.items():
        by_peer.setdefault(peer, []).append(ipaddress.IPv4Network(prefix))
    want = sorted((str(n), p) for p, nets in by_peer.items() for n in ipaddress.collapse_addresses(nets))
    assert sorted(collapse_routes(routes)) == want
