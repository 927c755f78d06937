"""A small epoll event loop: fd handlers, timers, and a wake-up pipe for signals and other threads."""

from __future__ import annotations

import ctypes
import ctypes.util
import heapq
import logging
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


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


_CLOCK_MONOTONIC = 1        # what time.monotonic() reads
_TFD_TIMER_ABSTIME = 1
_TFD_FLAGS = os.O_NONBLOCK | os.O_CLOEXEC
_libc: ctypes.CDLL | None = None


def _timerfd_libc() -> ctypes.CDLL | None:
    global _libc
    if _libc is None:
        try:
            lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            lib.timerfd_create.argtypes = (ctypes.c_int, ctypes.c_int)
            lib.timerfd_settime.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.POINTER(_Itimerspec), ctypes.c_void_p)
            _libc = lib
        except (OSError, AttributeError):
            return None
    return _libc


class PreciseTimer:
    """One re-armable one-shot timer with sub-millisecond resolution, served by the loop: a timerfd
    (CLOCK_MONOTONIC, absolute) registered with epoll, so ``fn`` runs when the kernel's hrtimer fires and
    not at epoll's millisecond-rounded timeout. Where timerfd is unavailable it falls back to
    :meth:`Loop.call_later` (and says so in :attr:`kind`). ``arm(when)`` takes a time.monotonic() value."""

    def __init__(self, loop: "Loop", fn: Callable[[], None]) -> None:
        self.loop = loop
        self.fn = fn
        self.fd = -1
        self.armed = 0.0     # the time it is armed for (0: not armed)
        self._fallback: Timer | None = None
        self._spec = _Itimerspec()
        lib = _timerfd_libc()
        if lib is not None:
            fd = lib.timerfd_create(_CLOCK_MONOTONIC, _TFD_FLAGS)
            if fd >= 0:
                self.fd = fd
                self._lib = lib
                loop.add(fd, EPOLLIN, self._fire)
        self.kind = "timerfd" if self.fd >= 0 else "loop (ms)"
        if self.fd < 0:
            logging.getLogger("tunlab.relay").info("timerfd unavailable: delayed packets use the loop's "
                                                   "millisecond timers")

    def arm(self, when: float) -> None:
        """Run ``fn`` at ``when`` (re-arming replaces the previous time)."""
        self.armed = when
        if self.fd >= 0:
            when = max(when, 1e-9)
            sec = int(when)
            self._spec.it_value.tv_sec = sec
            self._spec.it_value.tv_nsec = int((when - sec) * 1e9)
            self._lib.timerfd_settime(self.fd, _TFD_TIMER_ABSTIME, ctypes.byref(self._spec), None)
        else:
            if self._fallback is not None:
                self._fallback.cancel()
            self._fallback = self.loop.call_later(when - time.monotonic(), self._fire_fallback)

    def _fire(self, events: int) -> None:
        try:
            os.read(self.fd, 8)
        except (BlockingIOError, OSError):
            return  # re-armed to a later time after it fired: nothing due yet
        self.armed = 0.0
        self.fn()

    def _fire_fallback(self) -> None:
        self._fallback = None
        self.armed = 0.0
        self.fn()

    def close(self) -> None:
        if self.fd >= 0:
            self.loop.remove(self.fd)
            os.close(self.fd)
            self.fd = -1
        if self._fallback is not None:
            self._fallback.cancel()


class Loop:
    """Level-triggered epoll; handlers get the event mask. Not thread-safe except :meth:`stop` and
    :meth:`call_soon_threadsafe`, which are also safe from signal handlers."""

    def __init__(self) -> None:
        self.ep = select.epoll()
        self.handlers: dict[int, Handler] = {}
        self.timers: list[Timer] = []
        self._seq = 0
        self.pending: list[Callable[[], None]] = []
        #: replaces epoll's poll(timeout) -> [(fd, events)] when set before run(): the compiled datapath
        #: waits on this loop's epoll itself and hands back only what its C loops do not handle
        self.poller: Callable[[float], list[tuple[int, int]]] | None = None
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

    def precise_timer(self, fn: Callable[[], None]) -> PreciseTimer:
        """A re-armable timer with sub-millisecond resolution (timerfd), for packets that leave later."""
        return PreciseTimer(self, fn)

    # -- cross-thread / signal-safe
    def wake(self) -> None:
        try:
            os.write(self._wfd, b"\0")
        except (BlockingIOError, OSError):
            pass

    def call_soon(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` from inside the loop once the current handlers are done (no wake-up needed)."""
        self.pending.append(fn)

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
        poll = self.poller or self.ep.poll
        handlers = self.handlers
        timers = self.timers
        while not self.stopping:
            timeout = -1.0
            if self.pending:  # call_soon() from outside a handler: do not wait for the next event first
                timeout = 0.0
            elif timers:
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
