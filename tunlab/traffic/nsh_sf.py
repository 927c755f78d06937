"""NSH-aware service functions for scenarios and tests (issue 18): hooks a relay in NSH mode calls with the
NSH header + inner packet (``Vnf(..., nsh_hook="tunlab.traffic.nsh_sf:stamp")``) and that return the same,
SI decremented as RFC 8300 asks of an SF -- and a few that break that on purpose, for the checks to catch.

MD type 1 context words used here: word 3 (bytes 12..15) is the classifier's, word 0 (bytes 0..3) an SF's
stamp ``b"SF1\\0"``, word 1 (bytes 4..7) what a later SF read from it (``b"OK1\\0"``).
"""

from __future__ import annotations

from tunlab.relay.nsh import Nsh, decode

STAMP = b"SF1\0"
READ_OK = b"OK1\0"


def _split(pkt: bytes) -> tuple[Nsh, bytes]:
    h = decode(pkt)
    return h, pkt[h.length:]


def stamp(pkt: bytes) -> bytes:
    """Write STAMP into context word 0 and take one from the SI."""
    h, inner = _split(pkt)
    return h.replace(si=h.si - 1, context=STAMP + h.context[4:]).encode() + inner


def require_stamp(pkt: bytes) -> bytes | None:
    """Read the stamp an earlier SF wrote: drop without it, else note READ_OK in word 1; take one from the SI."""
    h, inner = _split(pkt)
    if h.context[:4] != STAMP:
        return None
    return h.replace(si=h.si - 1, context=h.context[:4] + READ_OK + h.context[8:]).encode() + inner


def passthrough(pkt: bytes) -> bytes:
    """A well-behaved SF that changes nothing but the SI."""
    h, inner = _split(pkt)
    return h.replace(si=h.si - 1).encode() + inner


def wipe_metadata(pkt: bytes) -> bytes:
    """Fault: decrements the SI but zeroes the context (metadata lost)."""
    h, inner = _split(pkt)
    return h.replace(si=h.si - 1, context=bytes(16)).encode() + inner
