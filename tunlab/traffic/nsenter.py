"""Enter a network namespace from one thread, and open sockets inside namespaces.

``setns(2)`` moves only the calling thread; a socket keeps the namespace it was created in for its whole
life. So sockets for a node are opened by a short-lived helper thread that enters the node's namespace
(``/run/netns/NAME`` or ``/proc/PID/ns/net``), and the caller uses them from wherever it runs.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from tunlab.errors import TunlabError

CLONE_NEWNET = 0x40000000
T = TypeVar("T")

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


@contextmanager
def entered(netns_file: str) -> Iterator[None]:
    """Run the body with this thread inside the namespace of ``netns_file``; come back afterwards.

    Never use it on the main thread of a program that may be interrupted between the two setns calls;
    :func:`in_netns` runs a function in a helper thread instead.
    """
    home = os.open(f"/proc/self/task/{threading.get_native_id()}/ns/net", os.O_RDONLY)
    try:
        try:
            target = os.open(netns_file, os.O_RDONLY)
        except OSError as exc:
            raise TunlabError(f"cannot open the network namespace {netns_file}: {exc.strerror}",
                              "is the lab still up?") from None
        try:
            _setns(target)
        finally:
            os.close(target)
        try:
            yield
        finally:
            _setns(home)
    finally:
        os.close(home)


def in_netns(netns_file: str, fn: Callable[[], T], *, timeout: float = 10.0) -> T:
    """Call ``fn()`` in a helper thread inside ``netns_file``'s namespace and return its result."""
    box: dict[str, object] = {}

    def run() -> None:
        try:
            with entered(netns_file):
                box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            box["error"] = exc

    t = threading.Thread(target=run, name=f"netns:{os.path.basename(netns_file)}", daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        raise TunlabError(f"entering {netns_file} did not finish within {timeout:.0f} s")
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["value"]  # type: ignore[return-value]


def socket_in(netns_file: str, family: int, type_: int, proto: int = 0) -> socket.socket:
    """A socket created inside ``netns_file``'s namespace (the caller does not move)."""
    return in_netns(netns_file, lambda: socket.socket(family, type_, proto))
