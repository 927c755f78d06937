"""Expectations and verdicts under impairments (issue 17): parsing, the decision index, loss checks."""

from __future__ import annotations

import json

import pytest

from tunlab.errors import DescriptionError
from tunlab.model.flows import Expect, parse_expect
from tunlab.model.scenario import loss_rate
from tunlab.relay.linkpath import digest
from tunlab.verdict.impairments import ImpairLog, describe


def test_expectations() -> None:
    kw = {"default": "delivered", "source": "s.py", "where": "expect"}
    assert parse_expect("delivered or dropped by impairment", **kw) == Expect(or_impaired=True)
    assert parse_expect("Reply  or dropped by impairment", **kw) == Expect(reply=True, or_impaired=True)
    assert Expect(reply=True, or_impaired=True).describe() == "delivered, reply or dropped by impairment"
    with pytest.raises(DescriptionError, match="only a delivery"):
        parse_expect("dropped at vnf1 or dropped by impairment", **kw)
    assert loss_rate("5%", "s", "f") == 0.05 and loss_rate(0.1, "s", "f") == 0.1
    with pytest.raises(DescriptionError, match="is not a loss rate"):
        loss_rate("lots", "s", "f")


def test_decision_index(tmp_path) -> None:
    pkt = b"E" + bytes(27)
    lines = [{"link": "a-b", "dir": "a>b", "n": 3, "kind": "loss", "pkt": digest(pkt)},
             {"link": "a-b", "dir": "a>b", "n": 4, "kind": "delay", "value": 0.01, "pkt": digest(b"x")}]
    (tmp_path / "a.impair.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\nnot json\n")
    log = ImpairLog.load(tmp_path)
    assert log.count == 2
    d = log.drop_of(pkt, "a>b")
    assert d is not None and describe(d) == "dropped by impairment on link a>b (loss, decision #3)"
    assert log.drop_of(pkt, "b>a") is None and log.drop_of(b"x", "a>b") is None
