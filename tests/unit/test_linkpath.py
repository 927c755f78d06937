"""The per-peer send path (relay/linkpath.py): stages in order, drops by reason, run-time control, the
bounded queue of delayed packets on a precise timer, and the relay options that configure it."""

from __future__ import annotations

import json
import time

import pytest

from tunlab.relay.command import configs_from_args
from tunlab.relay.config import ConfigError
from tunlab.relay.impair import ImpairError
from tunlab.relay.linkpath import (STAGES, DecisionLog, LinkPath, PathContext, Scheduler, StageError, build_paths,
                                   digest, register_stage)
from tunlab.relay.loop import Loop

PKT = bytes.fromhex("4500001c0001000040010000") + bytes([10, 0, 0, 1, 10, 0, 0, 2]) + bytes(8)


def ctx(tmp_path, seed: int = 1) -> PathContext:
    return PathContext(seed, DecisionLog(str(tmp_path / "d.jsonl")), {"b": ("a-b", "a>b")})


def test_impair_stage_drops_are_prefixed_and_logged(tmp_path) -> None:
    c = ctx(tmp_path)
    path = build_paths(["b"], {"b": {"impair": {"spec": "loss=50% delay=5ms"}}}, c)["b"]
    assert not path.gso_ok
    outs = [path.tx(PKT, 100.0) for _ in range(1000)]
    lost = sum(1 for o in outs if not o)
    assert 400 < lost < 600
    assert all(at == pytest.approx(100.005) for o in outs for _, at in o)
    assert path.drops() == {"impair_loss": lost}
    assert path.counters()["impair"]["delay"] == 1000 - lost
    c.decisions.close()
    lines = [json.loads(x) for x in (tmp_path / "d.jsonl").read_text().splitlines()]
    assert len(lines) == 1000  # one decision per packet: lost, or delayed
    assert lines[0]["link"] == "a-b" and lines[0]["dir"] == "a>b" and lines[0]["pkt"] == digest(PKT)
    assert [d["n"] for d in lines] == list(range(1, 1001))


def test_same_seed_same_log_other_link_independent(tmp_path) -> None:
    def log(seed: int, labels: dict) -> list[str]:
        d = tmp_path / f"{seed}-{len(labels)}-{time.monotonic_ns()}.jsonl"
        c = PathContext(seed, DecisionLog(str(d)), labels)
        paths = build_paths(list(labels), {p: {"impair": {"spec": "loss=10% delay=1ms jitter=1ms"}}
                                           for p in labels}, c)
        for i in range(2000):
            for p in paths.values():
                p.tx(PKT + bytes([i % 256]), i * 1e-3)
        c.decisions.close()
        return [x for x in d.read_text().splitlines() if '"peer": "b"' in x]

    one = log(7, {"b": ("a-b", "a>b")})
    assert one == log(7, {"b": ("a-b", "a>b")})
    # impairing another link as well changes nothing on this one
    assert one == log(7, {"b": ("a-b", "a>b"), "c": ("a-c", "a>c")})
    assert one != log(8, {"b": ("a-b", "a>b")})


def test_control_sets_clears_and_takes_the_link_down(tmp_path) -> None:
    c = ctx(tmp_path)
    path = build_paths(["b"], {"b": {"impair": {"spec": "delay=10ms"}}}, c)["b"]
    st = path.stage("impair")
    assert st.control({"set": {"loss": "100%"}})["spec"] == "delay=0.01 loss=1.0"
    assert path.tx(PKT, 0.0) == [] and path.drops() == {"impair_loss": 1}
    st.control({"clear": True, "state": "down"})
    assert path.tx(PKT, 0.0) == [] and path.drops()["impair_link_down"] == 1
    st.control({"state": "up"})
    assert path.tx(PKT, 0.0) == [(PKT, 0.0)]
    with pytest.raises(ImpairError):
        st.control({"set": "delay=fast"})
    with pytest.raises(StageError):
        st.control({"state": "sideways"})


def test_unknown_stage_and_peer_are_refused(tmp_path) -> None:
    with pytest.raises(StageError, match="no peer is named 'x'"):
        build_paths(["b"], {"x": {"impair": {}}}, ctx(tmp_path))
    with pytest.raises(StageError, match="stage 'zip' is unknown"):
        build_paths(["b"], {"b": {"zip": {}}}, ctx(tmp_path))


def test_registered_stages_run_in_their_order(tmp_path) -> None:
    class Tag:
        name = "tag"
        gso_ok = True

        def tx(self, pkt, now):
            return [(pkt + b"T", now)]

        def rx(self, data, now):
            return data[:-1]

        def counters(self):
            return {"drop_never": 0}

        def control(self, request):
            return {}

    register_stage("tag", 10, lambda ctx, peer, conf: Tag())
    try:
        path = build_paths(["b"], {"b": {"impair": {"spec": "delay=1ms"}, "tag": {}}}, ctx(tmp_path))["b"]
        assert [s.name for s in path.stages] == ["tag", "impair"]
        assert path.tx(b"x", 0.0) == [(b"xT", 0.001)]
        assert path.rx(b"xT", 0.0) == b"x"
        assert path.drops() == {}
    finally:
        del STAGES["tag"]


def test_scheduler_sends_on_time_and_bounds_the_queue(monkeypatch) -> None:
    import tunlab.relay.linkpath as lp

    loop = Loop()
    sent: list[tuple[float, bytes]] = []
    sched = Scheduler(loop, lambda peer, data: sent.append((time.monotonic(), data)))
    assert sched.timer.kind == "timerfd"

    class P:
        path = None

    peer, path = P(), LinkPath("b")
    monkeypatch.setattr(lp, "QUEUE_MAX", 3)
    now = time.monotonic()
    sched.put(peer, path, [(b"%d" % i, now + 0.005 + i * 0.001) for i in range(5)] + [(b"now", now)], now)
    # what is due now leaves once the current handler is done (with others for the same peer)
    assert sent == [] and sched.ready == [(peer, b"now")] and path.waiting == 3 and path.overflow == 2
    loop.call_later(0.05, loop.stop)
    loop.run()
    sched.close()
    loop.close()
    assert [d for _, d in sent] == [b"now", b"0", b"1", b"2"]
    late = [t - (now + 0.005 + i * 0.001) for i, (t, _) in enumerate(sent[1:])]
    assert all(0 <= x < 0.005 for x in late), late
    acc = sched.accuracy()
    assert acc["n"] == 3 and -20 <= acc["median_us"] <= acc["p99_us"] <= acc["max_us"] < 5000
    assert path.waiting == 0 and path.drops() == {"impair_queue_overflow": 2}


def test_relay_options() -> None:
    base = ["--dev", "t0", "--addr", "10.0.0.1/24", "--listen", "127.0.0.1:5000", "--peer", "b=127.0.0.1:5001"]
    (cfg,) = configs_from_args([*base, "--impair", "b=delay=20ms loss=1%", "--seed", "9",
                                "--link-label", "b=x-y,x>y", "--impair-log", "/tmp/d"])
    assert cfg.impair == (("b", "delay=20ms loss=1%"),) and cfg.seed == 9
    assert cfg.link_labels == (("b", "x-y", "x>y"),) and cfg.impair_log == "/tmp/d"
    for bad, msg in ((["--impair", "c=delay=1ms"], "no peer is named 'c'"),
                     (["--impair", "b=jitter=1ms"], "jitter needs a delay"),
                     (["--impair", "nospec"], "is not PEER=SPEC"),
                     (["--link-label", "b=xy"], "is not PEER=LINK,DIR")):
        with pytest.raises(ConfigError, match=msg):
            configs_from_args([*base, *bad])
    # -m both: each part gets the impairments of its own peer
    server, client = configs_from_args(["-r", "127.0.0.1", "--impair", "client=delay=1ms",
                                        "--impair", "server=loss=1%"])
    assert server.impair == (("client", "delay=1ms"),) and client.impair == (("server", "loss=1%"),)


def test_decision_log_is_bounded(tmp_path, monkeypatch) -> None:
    import tunlab.relay.linkpath as lp

    monkeypatch.setattr(lp, "LOG_BYTES", 2000)
    log = DecisionLog(str(tmp_path / "d.jsonl"))
    for i in range(200):
        log.add(f'{{"n": {i}, "kind": "delay"}}', essential=False)
        log.add(f'{{"n": {i}, "kind": "loss"}}')
    log.close()
    lines = (tmp_path / "d.jsonl").read_text().splitlines()
    assert 4000 < sum(len(x) + 1 for x in lines) <= 4100 and log.lost == 400 - len(lines)
    # past the first limit only the decisions checks need were kept
    assert all('"loss"' in x for x in lines[-10:])


def test_scheduler_hands_packets_due_together_over_in_one_call() -> None:
    loop = Loop()
    singles: list[bytes] = []
    batches: list[list[bytes]] = []
    sched = Scheduler(loop, lambda peer, d: singles.append(d), lambda peer, ds: batches.append(list(ds)))

    class P:
        pass

    b, c = P(), P()
    pb, pc = LinkPath("b"), LinkPath("c")
    now = time.monotonic()
    sched.put(b, pb, [(b"1", now + 0.005), (b"2", now + 0.005), (b"3", now + 0.005)], now)
    sched.put(c, pc, [(b"x", now + 0.005)], now)
    sched.put(b, pb, [(b"4", now + 0.02)], now)
    loop.call_later(0.05, loop.stop)
    loop.run()
    sched.close()
    loop.close()
    assert batches == [[b"1", b"2", b"3"]] and singles == [b"x", b"4"]
