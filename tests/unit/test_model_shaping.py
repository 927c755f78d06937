"""Link shaping in the description: validated before anything exists, errors name the link and field."""

from __future__ import annotations

import pytest

from tunlab.model.topology import Link, TopologyError, linear_chain


def test_rate_limit_is_kept_and_hashable() -> None:
    lk = Link("a", "b", "10.0.0.1/30", "10.0.0.2/30", shaping={"bw": 10})
    assert dict(lk.shaping) == {"bw": 10}
    assert hash(lk) == hash(Link("a", "b", "10.0.0.1/30", "10.0.0.2/30", shaping={"bw": 10}))


@pytest.mark.parametrize(("opts", "words"), [
    ({"bandwidth": 10}, "unknown link option(s) bandwidth"),
    ({"bw": -1}, "bw=-1 is out of range"),
    ({"jitter": "1ms"}, "jitter needs a delay"),
    ("10mbit", "is not a dict of link options"),
])
def test_bad_shaping_names_link_and_field(opts: object, words: str) -> None:
    with pytest.raises(TopologyError) as exc:
        Link("a", "b", "10.0.0.1/30", "10.0.0.2/30", shaping=opts)
    assert "link 'a-b' field 'shaping'" in str(exc.value)
    assert words in str(exc.value)


def test_linear_chain_shapes_the_named_link_and_refuses_unknown_names() -> None:
    topo = linear_chain(2, shaping={"vnf1-vnf2": {"bw": 5}})
    shaped = {lk.name: dict(lk.shaping) for lk in topo.links if lk.shaping}
    assert shaped == {"vnf1-vnf2": {"bw": 5}}
    with pytest.raises(TopologyError, match="no link named vnf9-vnf1"):
        linear_chain(2, shaping={"vnf9-vnf1": {"bw": 5}})
