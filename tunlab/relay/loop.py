"""A small epoll event loop: fd handlers, timers, and a wake-up pipe for signals and other threads."""

from __future__ import annotations

import heapq
import os
import select
import time
from typing import Callable

EPOLLIN = select.EPOLLIN
EPOLLOUT = select.EPOLLOUT
EPOLLERR = select.EPOLLERR
EPOLLHUP = select.EPOLLHUP

Handler = Callable[[int], None]


class Timer:
    __slots__ = ("when", "seq", "fn", "cancelled")

    def __init__(self, when: float, seq: int, fn: Callable[[], None]) -> None:
        self.when = when
        self.seq = seq
        self.fn = fn
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True

    def __lt__(self, other: "Timer") -> bool:
        return (self.when, self.seq) < (other.when, other.seq)


class Loop:
    """Level-triggered epoll; handlers get the event mask. Not thread-safe except :meth:`stop` and
    :meth:`call_soon_threadsafe`, which are also safe from signal handlers."""

    def __init__(self) -> None:
        self.ep = select.epoll()
        self.handlers: dict[int, Handler] = {}
        self.timers: list[Timer] = []
        self._seq = 0
        self.pending: list[Callable[[], None]] = []
        self.stopping = False
        self._rfd, self._wfd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.add(self._rfd, EPOLLIN, self._drain_wake)

    # -- descriptors
    def add(self, fd: int, events: int, handler: Handler) -> None:
        self.ep.register(fd, events)
        self.handlers[fd] = handler

    def modify(self, fd: int, events: int) -> None:
        self.ep.modify(fd, events)

    def remove(self, fd: int) -> None:
        if self.handlers.pop(fd, None) is not None:
            try:
                self.ep.unregister(fd)
            except (OSError, ValueError):
                pass

    # -- time
    def call_later(self, delay: float, fn: Callable[[], None]) -> Timer:
        self._seq += 1
        t = Timer(time.monotonic() + max(0.0, delay), self._seq, fn)
        heapq.heappush(self.timers, t)
        return t

    # -- cross-thread / signal-safe
    def wake(self) -> None:
        try:
            os.write(self._wfd, b"\0")
        except (BlockingIOError, OSError):
            pass

    def call_soon_threadsafe(self, fn: Callable[[], None]) -> None:
        self.pending.append(fn)
        self.wake()

    def stop(self) -> None:
        self.stopping = True
        self.wake()

    def _drain_wake(self, events: int) -> None:
        try:
            while os.read(self._rfd, 512):
                pass
        except (BlockingIOError, OSError):
            pass

    # -- running
    def run(self) -> None:
        poll = self.ep.poll
        handlers = self.handlers
        timers = self.timers
        while not self.stopping:
            timeout = -1.0
            if timers:
                timeout = max(0.0, timers[0].when - time.monotonic())
            for fd, ev in poll(timeout):
                h = handlers.get(fd)
                if h is not None:
                    h(ev)
            if timers:
                self._run_timers()
            if self.pending:
                self._run_pending()

    def _run_timers(self) -> None:
        now = time.monotonic()
        timers = self.timers
        while timers and (timers[0].when <= now or timers[0].cancelled):
            t = heapq.heappop(timers)
            if not t.cancelled:
                t.fn()

    def _run_pending(self) -> None:
        pending, self.pending = self.pending, []
        for fn in pending:
            fn()

    def close(self) -> None:
        for fd in (self._rfd, self._wfd):
            try:
                os.close(fd)
            except OSError:
                pass
        self.ep.close()
        self.handlers.clear()
