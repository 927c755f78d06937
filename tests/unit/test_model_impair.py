"""Link impairments in the description (issue 17): Link(impair=..., impair_ab=, impair_ba=), YAML keys,
one-line errors naming the link and field, the plan's relay options and the run seed."""

from __future__ import annotations

from pathlib import Path

import pytest

from tunlab.errors import DescriptionError
from tunlab.model.plan import build_plan
from tunlab.model.topology import Link, TopologyError, linear_chain
from tunlab.model.yamlfile import load_yaml_topology
from tunlab.relay.command import configs_from_args


def test_link_impairments_per_direction() -> None:
    lk = Link("a", "b", "10.0.0.1/30", "10.0.0.2/30", impair={"delay": "10ms", "loss": "1%"},
              impair_ba="jitter=2ms")
    assert lk.impair == "delay=10ms loss=1%"
    assert lk.impairs() == {"a>b": "delay=10ms loss=1%", "b>a": "delay=10ms loss=1% jitter=2ms"}
    assert Link("a", "b", "10.0.0.1/30", "10.0.0.2/30", impair_ab="loss=5%").impairs() == {"a>b": "loss=5%"}
    assert Link("a", "b", "10.0.0.1/30", "10.0.0.2/30").impairs() == {}


@pytest.mark.parametrize("kw, msg", [
    ({"impair": "delay=fast"}, "link 'a-b' field 'impair': delay='fast' is not a time"),
    ({"impair_ab": "loss=2"}, "link 'a-b' field 'impair_ab': loss='2' is out of range"),
    ({"impair_ba": 5}, "link 'a-b' field 'impair_ba': 5 is not a string or dict"),
    ({"impair": "wobble=1"}, "'wobble' is not an impairment"),
])
def test_bad_impairments_are_one_line_errors(kw: dict, msg: str) -> None:
    with pytest.raises(TopologyError) as exc:
        Link("a", "b", "10.0.0.1/30", "10.0.0.2/30", **kw)
    assert msg in str(exc.value) and "\n" not in str(exc.value)


def test_plan_passes_impairments_labels_seed_and_log() -> None:
    t = linear_chain(1, impair={"vnf1-receiver": "delay=5ms"}, seed=42)
    plan = build_plan(t, "t17a", "/run/tunlab/t17a")
    assert plan.seed == 42
    (cfg,) = configs_from_args(plan.node("vnf1").relay_args)
    assert cfg.seed == 42 and cfg.impair == (("receiver", "delay=5ms"),)
    assert cfg.impair_log == "/run/tunlab/t17a/vnf1.impair.jsonl"
    assert dict((p, (lk, d)) for p, lk, d in cfg.link_labels) == {
        "sender": ("sender-vnf1", "vnf1>sender"), "receiver": ("vnf1-receiver", "vnf1>receiver")}
    (rcv,) = configs_from_args(plan.node("receiver").relay_args)
    assert rcv.impair == (("vnf1", "delay=5ms"),)
    assert configs_from_args(plan.node("sender").relay_args)[0].impair == ()
    # --seed wins over the topology's; without either, the run id decides (pure, differs per run)
    assert build_plan(t, "t17a", "/x", seed=7).seed == 7
    plain = linear_chain(1)
    assert build_plan(plain, "t17a", "/x").seed == build_plan(plain, "t17a", "/y").seed
    assert build_plan(plain, "t17a", "/x").seed != build_plan(plain, "t17b", "/x").seed
    with pytest.raises(TopologyError, match="no link named vnf1-vnf9"):
        linear_chain(1, impair={"vnf1-vnf9": "delay=1ms"})
    with pytest.raises(TopologyError, match="field 'seed'"):
        linear_chain(1, seed=-1)


def test_yaml_keys(tmp_path: Path) -> None:
    text = """
name: lossy
seed: 3
endpoints: [{name: sender, overlay: 172.16.0.1}, {name: receiver, overlay: 172.16.0.2}]
links:
  - {a: sender, b: receiver, a_addr: 10.0.0.1/30, b_addr: 10.0.0.2/30,
     impair: {delay: 10ms, jitter: 2ms/normal}, impair_ba: "loss=1%"}
paths: [{nodes: [sender, receiver]}]
"""
    p = tmp_path / "lossy.yaml"
    p.write_text(text)
    t = load_yaml_topology(p)
    assert t.seed == 3 and t.links[0].impairs()["receiver>sender"] == "delay=10ms jitter=2ms/normal loss=1%"
    p.write_text(text.replace("loss=1%", "loss=1x"))
    with pytest.raises(DescriptionError) as exc:
        load_yaml_topology(p)
    assert "impair_ba" in str(exc.value) and "lossy.yaml" in str(exc.value) and "\n" not in str(exc.value)


def test_netem_options_move_to_the_relays() -> None:
    from tunlab.model.shaping import netem_to_relay

    t = linear_chain(2, shaping={"sender-vnf1": {"delay": "5msec", "jitter": 1, "loss": 2, "bw": 10},
                                 "vnf1-vnf2": {"bw": 5}}, impair={"sender-vnf1": "duplicate=1%"})
    moved, notes = netem_to_relay(t)
    a, b, _ = moved.links
    assert a.impair == "delay=5ms jitter=1ms loss=2% duplicate=1%" and dict(a.shaping) == {"bw": 10}
    assert b == t.links[1] and len(notes) == 1 and "link sender-vnf1: delay=5ms jitter=1ms loss=2%" in notes[0]
    same, none = netem_to_relay(linear_chain(1))
    assert none == [] and same == linear_chain(1)


def test_show_names_the_impairments(capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from tunlab.cli import cli

    path = str(Path(__file__).resolve().parents[2] / "scenarios" / "lossy_chain.py")
    outs = []
    for args in (["show", path], ["show", path, "--json"]):
        with pytest.raises(SystemExit) as exc:
            cli.main(args, prog_name="tunlab")
        assert exc.value.code == 0
        outs.append(capsys.readouterr().out)
    assert "impairments (by the relays; seed per run)" in outs[0] and "vnf2>vnf1" in outs[0]
    assert json.loads(outs[1])["links"][1]["impair"] == {"vnf1>vnf2": "delay=5ms jitter=2ms loss=10%",
                                                         "vnf2>vnf1": "delay=5ms jitter=2ms loss=10%"}
