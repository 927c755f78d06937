"""Wire formats: the TCP de-framer (2-byte big-endian length + packet) and packet checks.

Pure code, no root. The engine uses :class:`FrameReader` directly (receive straight into its buffer, no
copies); :class:`Deframer` wraps it for callers that have ``bytes`` in hand (tests, replay tools).
Nothing here raises on bad input: problems are reported as a drop reason string.
"""

from __future__ import annotations

from typing import Iterator

HEADER = 2
MAX_FRAME = 0xFFFF  # the largest length a 2-byte prefix can say

# drop reasons (counter keys); keep them short, stable and lower_snake_case
EMPTY = "empty"
TOO_BIG = "too_big"
NOT_IP = "not_ip"
TRUNCATED = "truncated"
BAD_LENGTH = "bad_length"


def frame_limit(packet_limit: int) -> int:
    """The largest TCP frame length a sane peer sends.

    Frames up to this size whose packet is bigger than our MTU are skipped (counted ``too_big``) and the
    stream stays in sync; a length of 0 or above this limit means the stream is not framed the way we
    expect, and the connection is closed. Standard Ethernet peers (simpletun, TunConnector: MTU 1500) must
    not lose their connection because our MTU is smaller.
    """
    return min(MAX_FRAME - 1, max(packet_limit, 1500 + 18))


def check_l3(buf: bytes | bytearray | memoryview, n: int, limit: int) -> str | None:
    """Why a packet for a TUN device must be dropped, or None when it looks like an IP packet."""
    if n <= 0:
        return EMPTY
    if n > limit:
        return TOO_BIG
    v = buf[0] >> 4
    if v == 4:
        return None if n >= 20 else TRUNCATED
    if v == 6:
        return None if n >= 40 else TRUNCATED
    return NOT_IP


def check_l2(buf: bytes | bytearray | memoryview, n: int, limit: int) -> str | None:
    """Why a frame for a TAP device must be dropped, or None when it can be an Ethernet frame."""
    if n <= 0:
        return EMPTY
    if n > limit:
        return TOO_BIG
    if n < 14:
        return TRUNCATED
    return None


class FrameReader:
    """Incremental de-framer over one preallocated buffer.

    Usage: ``n = sock.recv_into(reader.space()); reader.commit(n)`` then ``for frame in reader.frames()``.
    Each frame is a memoryview into the buffer, valid until the next :meth:`space` call. After a bad
    length (0, or more than ``max_len``) :attr:`error` is set and no more frames come out.
    """

    __slots__ = ("buf", "mv", "start", "end", "max_len", "error", "size")

    def __init__(self, max_len: int, size: int = 1 << 18) -> None:
        if not 0 < max_len <= MAX_FRAME:
            raise ValueError(f"max_len {max_len} out of range")
        size = max(size, HEADER + max_len)
        self.size = size
        self.buf = bytearray(size)
        self.mv = memoryview(self.buf)
        self.start = 0
        self.end = 0
        self.max_len = max_len
        self.error: str | None = None

    @property
    def pending(self) -> int:
        """Bytes received but not yet returned as frames."""
        return self.end - self.start

    def space(self) -> memoryview:
        """Free space to receive into (always at least one whole frame's worth)."""
        start, end = self.start, self.end
        if start == end:
            self.start = self.end = 0
        elif self.size - end < HEADER + self.max_len:
            left = end - start
            self.buf[0:left] = self.buf[start:end]
            self.start, self.end = 0, left
        return self.mv[self.end:]

    def commit(self, n: int) -> None:
        self.end += n

    def frames(self) -> Iterator[memoryview]:
        buf, mv, max_len = self.buf, self.mv, self.max_len
        start, end = self.start, self.end
        try:
            while end - start >= HEADER:
                length = (buf[start] << 8) | buf[start + 1]
                if length == 0 or length > max_len:
                    self.error = BAD_LENGTH
                    return
                stop = start + HEADER + length
                if stop > end:
                    return
                frame = mv[start + HEADER:stop]
                start = stop
                self.start = start
                yield frame
        finally:
            self.start = start

    def feed(self, data: bytes | bytearray | memoryview) -> int:
        """Copy as much of ``data`` in as fits; return how many bytes were taken."""
        space = self.space()
        n = min(len(space), len(data))
        space[:n] = data[:n]
        self.end += n
        return n


class Deframer:
    """Bytes in, whole packets out: ``push(chunk) -> list[bytes]``; never raises on any input."""

    def __init__(self, max_len: int = MAX_FRAME - 1) -> None:
        self.reader = FrameReader(max_len)

    @property
    def error(self) -> str | None:
        return self.reader.error

    @property
    def pending(self) -> int:
        return self.reader.pending

    def push(self, data: bytes | bytearray | memoryview) -> list[bytes]:
        out: list[bytes] = []
        view = memoryview(data)
        while True:
            taken = self.reader.feed(view) if not self.reader.error else len(view)
            view = view[taken:]
            if not self.reader.error:
                out.extend(bytes(f) for f in self.reader.frames())
            if not view or self.reader.error:
                return out


def frame(packet: bytes | bytearray | memoryview) -> bytes:
    """One frame on the wire: the packet's length (2 bytes, big-endian) then the packet."""
    n = len(packet)
    if not 0 < n <= MAX_FRAME:
        raise ValueError(f"a frame holds 1..{MAX_FRAME} bytes, not {n}")
    return n.to_bytes(2, "big") + bytes(packet)
