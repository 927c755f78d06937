"""The Mininet backend's options: link shaping from the model or the environment, the switch fabric."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

from tunlab.lab.backends.mininet.backend import LINKS_ENV, SWITCH_ENV, fabric_mode, link_shaping
from tunlab.model.shaping import LinkOptionError, NetemUnavailable
from tunlab.errors import TunlabError
from tunlab.model.topology import linear_chain
from tunlab.model.plan import build_plan


@dataclass(frozen=True)
class ShapedLink:
    name: str
    shaping: dict[str, object]


def plan_links() -> tuple[object, ...]:
    return build_plan(linear_chain(1), "abcd", "/run/tunlab/abcd").links


def test_no_options_means_no_shaping() -> None:
    assert link_shaping(plan_links(), linear_chain(1).links, env={}) == {}


def test_options_from_the_environment_and_the_model_merge(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("tunlab.lab.backends.netem.netem_available", lambda: False)
    env = {LINKS_ENV: json.dumps({"vnf1-receiver": {"bw": 20}, "sender-vnf1": {"use_tbf": True}})}
    model = [ShapedLink("sender-vnf1", {"bw": 5})]
    shaped = link_shaping(plan_links(), model, env=env)
    assert shaped["sender-vnf1"].tclink_params() == {"bw": 5.0, "use_tbf": True}
    assert shaped["vnf1-receiver"].bw == 20.0


@pytest.mark.parametrize("text, words", [
    ("{not json", "not JSON"),
    ('["bw"]', "must map link names to option objects"),
    ('{"sender-vnf9": {"bw": 1}}', "link 'sender-vnf9': the topology has no such link"),
    ('{"sender-vnf1": {"bw": 5000}}', "link 'sender-vnf1': bw=5000 is out of range"),
])
def test_bad_environment_options_are_one_line(text: str, words: str) -> None:
    with pytest.raises(LinkOptionError) as err:
        link_shaping(plan_links(), linear_chain(1).links, env={LINKS_ENV: text})
    assert words in str(err.value) and "\n" not in str(err.value)


def test_delay_without_netem_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("tunlab.lab.backends.netem.netem_available", lambda: False)
    with pytest.raises(NetemUnavailable, match="link 'vnf1-receiver': delay need\\(s\\) netem"):
        link_shaping(plan_links(), linear_chain(1).links, env={LINKS_ENV: '{"vnf1-receiver": {"delay": "5ms"}}'})
    monkeypatch.setattr("tunlab.lab.backends.netem.netem_available", lambda: True)
    shaped = link_shaping(plan_links(), linear_chain(1).links, env={LINKS_ENV: '{"vnf1-receiver": {"delay": 5}}'})
    assert shaped["vnf1-receiver"].delay == "5ms"


def test_fabric_mode() -> None:
    assert fabric_mode({}) is None
    assert fabric_mode({SWITCH_ENV: "none"}) is None
    assert fabric_mode({SWITCH_ENV: " Bridge "}) == "bridge"
    with pytest.raises(TunlabError, match="'hub' is not a Mininet fabric.*'bridge' or 'ovs'"):
        fabric_mode({SWITCH_ENV: "hub"})
