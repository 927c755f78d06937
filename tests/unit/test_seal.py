"""The sealing engine of keyed relay links (tunlab/relay/seal.py): handshake, seal/open, replay window, forged
and flipped input, key files, known answers."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tunlab.relay.seal import (HELLO_LEN, OVERHEAD, WINDOW, ReplayWindow, Sealer, SealError, hkdf, read_key_file)

PSK = bytes(range(32))


def pair(now: float = 1000.0, psk_b: bytes = PSK) -> tuple[Sealer, Sealer]:
    a, b = Sealer(PSK, nonce=b"A" * 16), Sealer(psk_b, nonce=b"B" * 16)
    kind, _, reply = b.open(a.hello(now), now)
    assert kind == "hello" and reply is not None
    kind, _, again = a.open(reply, now)
    assert kind == "hello" and again is None  # A learnt B's nonce and B already knows A's: done
    return a, b


def test_handshake_then_both_directions() -> None:
    a, b = pair()
    sealed = a.seal(b"\x45inner packet", 1000.1)
    assert sealed is not None and len(sealed) == len(b"\x45inner packet") + OVERHEAD
    assert b.open(sealed, 1000.1) == ("data", b"\x45inner packet", None)
    back = b.seal(b"reply", 1000.2)
    assert a.open(back, 1000.2) == ("data", b"reply", None)
    assert a.tx_key_id != b.tx_key_id  # one key per direction


def test_simultaneous_hellos_agree() -> None:
    a, b = Sealer(PSK, nonce=b"A" * 16), Sealer(PSK, nonce=b"B" * 16)
    ha, hb = a.hello(1.0), b.hello(1.0)
    _, _, ra = a.open(hb, 1.0)
    _, _, rb = b.open(ha, 1.0)
    for s, r in ((a, rb), (b, ra)):
        assert r is not None and s.open(r, 1.1)[2] is None
    assert b.open(a.seal(b"x", 2.0), 2.0)[1] == b"x" and a.open(b.seal(b"y", 2.0), 2.0)[1] == b"y"


def test_no_session_yet_means_no_seal() -> None:
    assert Sealer(PSK).seal(b"x", 0.0) is None


def test_wrong_key_changes_nothing() -> None:
    a = Sealer(PSK, nonce=b"A" * 16)
    b = Sealer(bytes(32), nonce=b"B" * 16)
    assert b.open(a.hello(1.0), 1.0)[0] == "seal_bad_hello"
    assert b.peer_nonce is None and b.tx is None


def test_replay_and_window() -> None:
    a, b = pair()
    packets = [a.seal(i.to_bytes(2, "big"), 1.0) for i in range(WINDOW + 10)]
    assert b.open(packets[5], 1.0)[0] == "data"
    assert b.open(packets[5], 1.0)[0] == "seal_replay"          # the same counter twice
    assert b.open(packets[3], 1.0)[0] == "data"                 # reordered within the window: fine
    assert b.open(packets[WINDOW + 9], 1.0)[0] == "data"        # jump ahead
    assert b.open(packets[4], 1.0)[0] == "seal_replay"          # now older than the window
    assert b.drops == {"seal_replay": 2}


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=5000), max_size=300))
def test_the_window_accepts_exactly_fresh_counters_within_reach(counters: list[int]) -> None:
    w = ReplayWindow(64)
    seen: set[int] = set()
    top = -1
    for n in counters:
        expected = n not in seen and (n > top or top - n < 64)
        assert w.check(n) is expected
        if expected:
            w.accept(n)
            seen.add(n)
            top = max(top, n)


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=0), st.integers(min_value=1, max_value=255))
def test_a_flipped_bit_anywhere_never_opens(position: int, mask: int) -> None:
    a, b = pair()
    sealed = bytearray(a.seal(b"\x45" + bytes(40), 1.0))  # type: ignore[arg-type]
    sealed[position % len(sealed)] ^= mask
    kind, payload, _ = b.open(bytes(sealed), 1.0)
    assert kind != "data" and payload is None
    assert b.open(a.seal(b"ok", 1.0), 1.0) == ("data", b"ok", None)  # and the session is unharmed


@pytest.mark.parametrize("data, reason", [(b"", "seal_short"), (b"\x02abc", "seal_short"), (b"\x07" * 40, "seal_unknown"),
                                          (b"\x01" * HELLO_LEN, "seal_bad_hello"), (b"\x01\x01", "seal_bad_hello")])
def test_garbage_is_dropped_by_reason(data: bytes, reason: str) -> None:
    a, b = pair()
    assert b.open(data, 1.0)[0] == reason
    assert b.open(a.seal(b"ok", 1.0), 1.0)[0] == "data"


def test_forged_datagrams_from_anyone_without_the_key_never_open() -> None:
    a, b = pair()
    rnd = __import__("random").Random(5)
    kinds = {b.open(bytes([2]) + rnd.randbytes(rnd.randrange(0, 1400)), 1.0)[0] for _ in range(20_000)}
    assert "data" not in kinds and "hello" not in kinds


def test_a_reflected_packet_does_not_open_at_its_sender() -> None:
    a, _ = pair()
    assert a.open(a.seal(b"x", 1.0), 1.0)[0] == "seal_no_session"  # type: ignore[arg-type]
    assert a.open(a.hello(2.0), 2.0)[0] == "seal_bad_hello"


def test_rekey_keeps_packets_in_flight_and_refuses_an_old_hello() -> None:
    a, b = pair(now=10.0)
    old_hello = a.hello(11.0)
    in_flight = a.seal(b"before", 11.0)
    assert b.open(old_hello, 11.0)[0] == "hello"          # the peer's current hello again: a fresh time, fine
    new = a.rekey(20.0)
    _, _, reply = b.open(new, 20.0)
    assert reply is not None and a.open(reply, 20.0)[0] == "hello"
    assert b.open(in_flight, 20.5) == ("data", b"before", None)    # the previous session, within its grace
    assert b.open(a.seal(b"after", 21.0), 21.0) == ("data", b"after", None)
    assert b.open(old_hello, 22.0)[0] == "seal_replay"              # recorded old hello: changes nothing
    assert b.open(a.seal(b"still", 22.0), 22.0) == ("data", b"still", None)
    assert b.open(in_flight, 40.0)[0] == "seal_no_session"         # grace is over


def test_rekey_is_due_by_age() -> None:
    a, _ = pair(now=0.0)
    assert not a.needs_rekey(1.0) and a.needs_rekey(121.0)


# ------------------------------------------------------------------------------------------ known answers


def test_hkdf_rfc5869_case_1() -> None:
    okm = hkdf(b"\x0b" * 22, bytes(range(13)), bytes(range(0xF0, 0xFA)), 42)
    assert okm.hex() == ("3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865")


def test_chacha20_poly1305_rfc8439_vector() -> None:
    from tunlab.relay.seal import aead_class

    key = bytes(range(0x80, 0xA0))
    nonce = bytes.fromhex("070000004041424344454647")
    aad = bytes.fromhex("50515253c0c1c2c3c4c5c6c7")
    text = (b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, "
            b"sunscreen would be it.")
    out = aead_class()(key).encrypt(nonce, text, aad)
    assert out[-16:].hex() == "1ae10b594f09e26a7e902ecbd0600691"


def test_the_wire_format_is_pinned() -> None:
    a, b = pair()
    sealed = a.seal(b"tunlab", 1.0)
    assert sealed is not None and sealed[0] == 2 and int.from_bytes(sealed[5:13], "big") == 0
    # the same PSK, nonces and packet always give the same bytes (a known answer of our own format)
    a2, _ = pair()
    assert a2.seal(b"tunlab", 5.0) == sealed


# -------------------------------------------------------------------------------------------------- keys


def test_key_files(tmp_path: Path) -> None:
    for name, content in (("raw", PSK), ("hex", PSK.hex().encode() + b"\n"), ("b64", base64.b64encode(PSK))):
        f = tmp_path / name
        f.write_bytes(content)
        os.chmod(f, 0o600)
        assert read_key_file(str(f)) == PSK
    loose = tmp_path / "loose"
    loose.write_bytes(PSK)
    os.chmod(loose, 0o644)
    with pytest.raises(SealError, match="chmod 600"):
        read_key_file(str(loose))
    short = tmp_path / "short"
    short.write_bytes(b"abc")
    os.chmod(short, 0o600)
    with pytest.raises(SealError, match="not a 32-byte key"):
        read_key_file(str(short))
    with pytest.raises(SealError, match="No such file"):
        read_key_file(str(tmp_path / "none"))
