"""Authenticated, encrypted relay links (issue 14): the sealing engine, pure (no sockets, no clock of its own).

WireGuard is the model for what users trust: nothing that fails to authenticate reaches a device or changes
any state, a peer's endpoint moves only on an authentic packet, keys are per session and per direction, the
message counter is the nonce and a sliding window rejects replays.

Wire format (every datagram, or every TCP frame's payload, on a keyed link; docs/ARCHITECTURE.md "Relay
internals", the per-link stage ``seal``)::

    hello   : type=1 | version=1 | time (8, ns) | sender nonce (16) | echo of the peer's nonce (16) | tag (16)
    data    : type=2 | key id (4) | counter (8, big-endian) | AEAD ciphertext of the inner packet + tag (16)

- The pre-shared key (32 bytes, from a file: never on a command line) gives, by HKDF-SHA256, a hello key
  (hellos are authenticated with it: a HMAC-SHA256 tag cut to 16 bytes) and, once both nonces are known,
  the session keys: ``HKDF(psk, salt = lower nonce | higher nonce, info = "tunlab-seal v1 " + direction)``
  where the direction names the sender's nonce, so each direction has its own key and a datagram reflected
  back to its sender does not open.
- A hello carries its sender's clock (nanoseconds, as WireGuard's TAI64N timestamp): a hello not newer than
  the last one accepted from that peer is a replay and changes nothing (else a recorded old hello could
  move a relay to keys its peer no longer has).
- Data: ChaCha20-Poly1305 (``cryptography``), 96-bit nonce = 4 zero bytes + the 64-bit counter, the header
  as associated data. The receiver keeps a 2048-message sliding window per session (RFC 6479's scheme,
  as WireGuard): a counter seen before or older than the window is dropped as ``replay``.
- Rekeying: a sender starts a new hello before its counter reaches ``REKEY_AFTER`` messages or the session
  is ``REKEY_SECONDS`` old; the previous receive session stays valid for ``GRACE`` seconds so packets in
  flight still open. A counter can never wrap: at ``REJECT_AFTER`` the session refuses to seal.

Every drop has a reason (``seal_bad_hello``, ``seal_auth``, ``seal_replay``, ``seal_short``, ``seal_no_session``,
``seal_unknown``) counted by the caller; nothing here raises on input.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from tunlab.errors import TunlabError

KEY_LEN = 32
NONCE_LEN = 16
TAG_LEN = 16
HELLO = 1
DATA = 2
VERSION = 1
HELLO_LEN = 2 + 8 + 2 * NONCE_LEN + TAG_LEN
DATA_HDR = struct.Struct("!BIQ")       # type, key id, counter
OVERHEAD = DATA_HDR.size + TAG_LEN     # 13 + 16 bytes per sealed packet
_ZERO4 = bytes(4)
WINDOW = 2048
REKEY_AFTER = 2**60
REJECT_AFTER = 2**64 - 2**13
REKEY_SECONDS = 120.0
GRACE = 10.0


class SealError(TunlabError):
    """A key or sealing setup problem (never raised for network input)."""


def aead_class() -> type:
    try:
        from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
    except ImportError:
        raise SealError("keyed links need the 'cryptography' package",
                        "pip install 'tunlab[crypto]' (or: pip install cryptography)") from None
    return ChaCha20Poly1305


def read_key_file(path: str) -> bytes:
    """A 32-byte key: the file holds it raw, or as 64 hex digits, or base64 (as `wg genpsk` writes)."""
    import base64

    try:
        st = os.stat(path)
        with open(path, "rb") as f:
            raw = f.read(4096)
    except OSError as exc:
        raise SealError(f"--psk-file {path}: {exc.strerror}", "give a file holding a 32-byte key") from None
    if st.st_mode & 0o077:
        raise SealError(f"--psk-file {path}: readable by others (mode {st.st_mode & 0o777:o})",
                        f"chmod 600 {path}")
    if len(raw) == KEY_LEN:
        return raw
    text = raw.strip()
    try:
        if len(text) == 2 * KEY_LEN:
            return bytes.fromhex(text.decode())
        key = base64.b64decode(text, validate=True)
        if len(key) == KEY_LEN:
            return key
    except (ValueError, UnicodeDecodeError):
        pass
    raise SealError(f"--psk-file {path}: not a 32-byte key",
                    "write 32 random bytes, 64 hex digits or base64 (e.g. head -c32 /dev/urandom > key)")


def hkdf(key: bytes, salt: bytes, info: bytes, length: int = KEY_LEN) -> bytes:
    """HKDF-SHA256 (RFC 5869)."""
    prk = hmac.new(salt or bytes(32), key, hashlib.sha256).digest()
    out, block, i = b"", b"", 1
    while len(out) < length:
        block = hmac.new(prk, block + info + bytes([i]), hashlib.sha256).digest()
        out += block
        i += 1
    return out[:length]


class ReplayWindow:
    """Sliding window of the last ``WINDOW`` counters (RFC 6479 / WireGuard's bitmap)."""

    def __init__(self, size: int = WINDOW) -> None:
        self.size = size
        self.top = -1          # highest counter accepted
        self.bits = 0          # bit i: counter top - i was seen

    def check(self, n: int) -> bool:
        """Would ``n`` be accepted (not a replay, not older than the window)?"""
        if n > self.top:
            return True
        age = self.top - n
        return age < self.size and not (self.bits >> age) & 1

    def accept(self, n: int) -> None:
        """Record ``n`` (call only after the packet authenticated)."""
        if n > self.top:
            shift = n - self.top
            self.bits = ((self.bits << shift) | 1) & ((1 << self.size) - 1) if shift < self.size else 1
            self.top = n
        else:
            self.bits |= 1 << (self.top - n)


@dataclass
class _Rx:
    key_id: int
    aead: object
    window: ReplayWindow = field(default_factory=ReplayWindow)
    until: float = float("inf")   # a previous session: valid until this time


@dataclass
class Sealer:
    """One end of one keyed link. ``hello(now)`` -> bytes to send; ``open(data, now)`` -> (kind, payload,
    reply): kind "data" (payload = the inner packet), "hello" (reply = a hello to send back, or None), or a
    drop reason; ``seal(packet, now)`` -> bytes, or None when no session is up yet (the caller queues or
    drops the packet as ``seal_no_session`` and sends a hello)."""

    psk: bytes
    nonce: bytes = field(default_factory=lambda: os.urandom(NONCE_LEN))
    peer_nonce: bytes | None = None
    counter: int = 0
    started: float = 0.0
    tx_key_id: int = 0
    peer_time: int = -1           # the newest hello time accepted from the peer (ns)
    drops: dict[str, int] = field(default_factory=dict)
    #: called with (key id, key) of each new session key, both directions (the relay's --seal-keylog)
    on_key: Callable[[int, bytes], None] | None = None

    def __post_init__(self) -> None:
        if len(self.psk) != KEY_LEN:
            raise SealError("the pre-shared key must be 32 bytes")
        self._aead = aead_class()
        self.hello_key = hkdf(self.psk, b"", b"tunlab-seal v1 hello")
        self.tx: object | None = None
        self.rx: dict[int, _Rx] = {}

    # -- handshake
    def _tag(self, body: bytes) -> bytes:
        return hmac.new(self.hello_key, body, hashlib.sha256).digest()[:TAG_LEN]

    def hello(self, now: float) -> bytes:
        self.sent_time = max(getattr(self, "sent_time", -1) + 1, int(now * 1e9))  # strictly increasing
        body = bytes([HELLO, VERSION]) + struct.pack("!Q", self.sent_time) + self.nonce + \
            (self.peer_nonce or bytes(NONCE_LEN))
        return body + self._tag(body)

    def _keys(self, now: float) -> None:
        assert self.peer_nonce is not None
        lo, hi = sorted((self.nonce, self.peer_nonce))
        salt = lo + hi
        tx_key = hkdf(self.psk, salt, b"tunlab-seal v1 from " + self.nonce)
        rx_key = hkdf(self.psk, salt, b"tunlab-seal v1 from " + self.peer_nonce)
        self.tx_key_id = int.from_bytes(hashlib.sha256(tx_key).digest()[:4], "big")
        rx_id = int.from_bytes(hashlib.sha256(rx_key).digest()[:4], "big")
        self.tx = self._aead(tx_key)
        self.counter = 0
        self.started = now
        for old in self.rx.values():
            old.until = min(old.until, now + GRACE)
        self.rx[rx_id] = _Rx(rx_id, self._aead(rx_key))
        if self.on_key is not None:
            self.on_key(self.tx_key_id, tx_key)
            self.on_key(rx_id, rx_key)

    def rekey(self, now: float) -> bytes:
        """Start a new session: a fresh nonce (the peer answers; until then the old keys keep working)."""
        self.nonce = os.urandom(NONCE_LEN)
        self.peer_nonce = None
        return self.hello(now)

    def needs_rekey(self, now: float) -> bool:
        return self.tx is not None and (self.counter >= REKEY_AFTER or now - self.started >= REKEY_SECONDS)

    def _on_hello(self, data: bytes, now: float) -> tuple[str, bytes | None, bytes | None]:
        if len(data) != HELLO_LEN or data[1] != VERSION:
            return self._drop("seal_bad_hello")
        body, tag = data[:-TAG_LEN], data[-TAG_LEN:]
        if not hmac.compare_digest(tag, self._tag(body)):
            return self._drop("seal_bad_hello")
        (sent,) = struct.unpack_from("!Q", body, 2)
        theirs, echo = body[10:10 + NONCE_LEN], body[10 + NONCE_LEN:]
        if theirs == self.nonce:
            return self._drop("seal_bad_hello")  # our own hello reflected back
        if sent <= self.peer_time:
            return self._drop("seal_replay")     # an old hello, recorded and sent again
        self.peer_time = sent
        reply = None
        if theirs != self.peer_nonce:
            self.peer_nonce = theirs
            self._keys(now)
            if echo != self.nonce:
                reply = self.hello(now)   # they do not know our nonce yet: tell them
        elif echo != self.nonce:
            reply = self.hello(now)
        return "hello", None, reply

    # -- data
    def seal(self, packet: bytes, now: float) -> bytes | None:
        if self.tx is None or self.counter >= REJECT_AFTER:
            return None
        n = self.counter
        self.counter += 1
        header = DATA_HDR.pack(DATA, self.tx_key_id, n)
        return header + self.tx.encrypt(bytes(4) + struct.pack("!Q", n), packet, header)  # type: ignore[attr-defined]

    def seal_many(self, packets: list[bytes], now: float) -> list[bytes] | None:
        """``[seal(p) for p in packets]`` (the same records, byte for byte), or None -- and nothing sealed --
        when any of them could not be."""
        n = self.counter
        if self.tx is None or n + len(packets) > REJECT_AFTER:
            return None
        enc = self.tx.encrypt  # type: ignore[attr-defined]
        pack, kid = DATA_HDR.pack, self.tx_key_id
        out = []
        for p in packets:
            header = pack(DATA, kid, n)
            out.append(header + enc(_ZERO4 + header[5:], p, header))
            n += 1
        self.counter = n
        return out

    def open(self, data: bytes, now: float) -> tuple[str, bytes | None, bytes | None]:
        if not data:
            return self._drop("seal_short")
        if data[0] == HELLO:
            return self._on_hello(data, now)
        if data[0] != DATA:
            return self._drop("seal_unknown")
        if len(data) < OVERHEAD:
            return self._drop("seal_short")
        _, key_id, n = DATA_HDR.unpack_from(data)
        rx = self.rx.get(key_id)
        if rx is None or rx.until < now:
            return self._drop("seal_no_session")
        if not rx.window.check(n):
            return self._drop("seal_replay")
        try:  # nonce: 4 zero bytes + the header's big-endian counter
            packet = rx.aead.decrypt(_ZERO4 + data[5:13], data[13:], data[:13])  # type: ignore[attr-defined]
        except Exception:  # noqa: BLE001 - cryptography's InvalidTag: forged, corrupted or another key
            return self._drop("seal_auth")
        rx.window.accept(n)  # only an authentic packet moves the window
        if len(self.rx) > 1:
            for kid in [k for k, r in self.rx.items() if r.until < now]:
                del self.rx[kid]
        return "data", packet, None

    def _drop(self, reason: str) -> tuple[str, None, None]:
        self.drops[reason] = self.drops.get(reason, 0) + 1
        return reason, None, None


def open_with(keys: Mapping[int, bytes], data: bytes) -> bytes | None:
    """Open a sealed data datagram with a known session key (a lab's checks and captures, from the relays'
    --seal-keylog); None when it is not a data datagram of a known key or does not authenticate."""
    if len(data) < OVERHEAD or data[0] != DATA:
        return None
    _, key_id, n = DATA_HDR.unpack_from(data)
    key = keys.get(key_id)
    if key is None:
        return None
    try:
        return bytes(aead_class()(key).decrypt(bytes(4) + struct.pack("!Q", n), data[DATA_HDR.size:],
                                               data[:DATA_HDR.size]))
    except Exception:  # noqa: BLE001 - InvalidTag
        return None


def read_keylog(path: str) -> dict[int, bytes]:
    """key id -> key, from a --seal-keylog file (one JSON object per line)."""
    import json

    out: dict[int, bytes] = {}
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                try:
                    rec = json.loads(line)
                    out[int(rec["key_id"])] = bytes.fromhex(rec["key"])
                except (ValueError, KeyError, TypeError):
                    continue
    except OSError:
        pass
    return out


def peek_with(keys: Mapping[int, bytes], data: bytes, n: int) -> bytes | None:
    """The first ``n`` bytes of a sealed data record's plaintext, NOT authenticated (ChaCha20-Poly1305
    encrypts with the ChaCha20 keystream from block 1): a lab's capture decoder reads a sealed chunk's header
    with it to cut a captured UDP GSO send into its datagrams, then opens each with :func:`open_with`."""
    if len(data) < OVERHEAD + n or data[0] != DATA:
        return None
    _, key_id, counter = DATA_HDR.unpack_from(data)
    key = keys.get(key_id)
    if key is None:
        return None
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

    nonce = (1).to_bytes(4, "little") + bytes(4) + struct.pack("!Q", counter)
    dec = Cipher(algorithms.ChaCha20(key, nonce), mode=None).decryptor()
    return dec.update(data[DATA_HDR.size:DATA_HDR.size + n])
