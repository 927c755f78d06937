"""Link option validation (tunlab.model.shaping) and the netem check of the backends (no root needed)."""

from __future__ import annotations

import pytest

from tunlab.lab.backends.netem import netem_from_kernel_config, netem_from_tc_result, require_netem_for
from tunlab.model.shaping import LinkOptionError, LinkShaping, NetemUnavailable, parse_link_options
from tunlab.errors import TunlabError


def test_no_options_is_empty_shaping() -> None:
    for empty in (None, {}):
        shaped = parse_link_options(empty)
        assert shaped == LinkShaping()
        assert shaped.empty and not shaped.needs_netem
        assert shaped.tclink_params() == {}


def test_rate_only_needs_no_netem() -> None:
    shaped = parse_link_options({"bw": 10, "use_tbf": True})
    assert shaped.bw == 10.0 and not shaped.needs_netem
    assert shaped.tclink_params() == {"bw": 10.0, "use_tbf": True}
    # refused only when netem is missing AND needed: a rate limit passes without netem
    require_netem_for(shaped, where="links[0]", netem=False)


@pytest.mark.parametrize("options, missing", [
    ({"delay": "5ms"}, "delay"),
    ({"loss": 1}, "loss"),
    ({"delay": 2, "jitter": "1ms"}, "delay, jitter"),
    ({"max_queue_size": 100}, "max_queue_size"),
    ({"bw": 5, "loss": "0.5%"}, "loss"),
])
def test_netem_options_refused_without_netem(options: dict[str, object], missing: str) -> None:
    shaped = parse_link_options(options, where="topo.py, links[1]")
    assert shaped.needs_netem
    with pytest.raises(NetemUnavailable) as err:
        require_netem_for(shaped, where="topo.py, links[1]", netem=False)
    text = str(err.value)
    assert text.startswith(f"topo.py, links[1]: {missing} need(s) netem")
    assert "silently" in text and "bw=" in text
    assert "\n" not in text
    assert isinstance(err.value, TunlabError)
    # accepted when netem is there
    require_netem_for(shaped, where="x", netem=True)


def test_zero_loss_and_zero_delay_do_not_need_netem() -> None:
    # Mininet emits no netem qdisc for loss=0, so neither do we ask for it
    assert not parse_link_options({"loss": 0}).needs_netem


def test_bare_number_delay_means_milliseconds() -> None:
    assert parse_link_options({"delay": 3}).delay == "3ms"
    assert parse_link_options({"delay": "250us"}).delay == "250us"


@pytest.mark.parametrize("options, words", [
    ({"bw": 5000}, "bw=5000 is out of range"),      # Mininet would log and ignore it
    ({"bw": 0}, "out of range"),
    ({"bw": "fast"}, "not a number"),
    ({"bw": True}, "must be a number"),
    ({"loss": 150}, "loss=150 is out of range"),
    ({"delay": "5 parsecs"}, "is not a time"),
    ({"delay": -1}, "must be >= 0"),
    ({"jitter": "1ms"}, "jitter needs a delay"),
    ({"use_tbf": True}, "need bw"),
    ({"bw": 1, "use_tbf": True, "use_hfsc": True}, "exclude each other"),
    ({"latency": "5ms"}, "unknown link option(s) latency"),
])
def test_bad_options_name_the_link_and_field(options: dict[str, object], words: str) -> None:
    with pytest.raises(LinkOptionError) as err:
        parse_link_options(options, where="t.py, links[0]")
    assert str(err.value).startswith("t.py, links[0]: ")
    assert words in str(err.value)


def test_kernel_config_parsing() -> None:
    assert netem_from_kernel_config("CONFIG_X=y\n# CONFIG_NET_SCH_NETEM is not set\n") is False
    assert netem_from_kernel_config("CONFIG_NET_SCH_NETEM=m\n") is True
    assert netem_from_kernel_config("CONFIG_NET_SCH_NETEM=y\n") is True
    assert netem_from_kernel_config("CONFIG_NET_SCH_TBF=y\n") is None


def test_tc_result_parsing() -> None:
    assert netem_from_tc_result(0, "") is True
    assert netem_from_tc_result(2, "Error: Specified qdisc kind is unknown.\n") is False
    with pytest.raises(TunlabError, match="could not probe for netem"):
        netem_from_tc_result(1, "RTNETLINK answers: Operation not permitted")
