"""Network namespaces through libc (no fork, no helper process): create and remove named ones, enter
one from a thread, open sockets inside one. The one implementation every layer uses.

``setns(2)`` moves only the calling thread; a socket keeps the namespace it was created in for its whole
life. So sockets for a node are opened by a short-lived helper thread that enters the node's namespace
(``/run/netns/NAME`` or ``/proc/PID/ns/net``), and the caller uses them from wherever it runs.
:func:`create_named` makes a named namespace the way ``ip netns add`` (and pyroute2) do -- a bind mount of
the thread's namespace on ``/run/netns/NAME`` -- so ``ip netns exec NAME`` works from any shell.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from tunlab.errors import TunlabError

NETNS_DIR = "/run/netns"
CLONE_NEWNET = 0x40000000
MS_BIND = 4096
MS_REC = 16384
MS_SHARED = 1 << 20
MNT_DETACH = 2
T = TypeVar("T")

_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_void_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]
_libc.unshare.argtypes = [ctypes.c_int]


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def netns_path(name: str) -> str:
    """The file of the named namespace ``name`` (``ip netns`` names)."""
    return f"{NETNS_DIR}/{name}"


def setns(fd: int) -> None:
    """Move the calling thread into the network namespace open at ``fd``."""
    _check(_libc.setns(fd, CLONE_NEWNET), "setns")


@contextmanager
def entered(netns_file: str) -> Iterator[None]:
    """Run the body with this thread inside the namespace of ``netns_file`` (``/run/netns/NAME`` or
    ``/proc/PID/ns/net``); come back afterwards.

    Never use it on the main thread of a program that may be interrupted between the two setns calls;
    :func:`in_netns` runs a function in a helper thread instead.
    """
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        try:
            target = os.open(netns_file, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise TunlabError(f"cannot open the network namespace {netns_file}: {exc.strerror}",
                              "is the lab still up?") from None
        try:
            setns(target)
        finally:
            os.close(target)
        try:
            yield
        finally:
            setns(home)
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


def share_netns_dir() -> None:
    """Make /run/netns a shared mount point (once per boot), as iproute2 does, so bind mounts in it
    are seen from every mount namespace."""
    os.makedirs(NETNS_DIR, exist_ok=True)
    if _libc.mount(b"", NETNS_DIR.encode(), b"none", MS_SHARED | MS_REC, None) == 0:
        return
    _check(_libc.mount(NETNS_DIR.encode(), NETNS_DIR.encode(), b"none", MS_BIND | MS_REC, None),
           f"bind-mount {NETNS_DIR}")
    _check(_libc.mount(b"", NETNS_DIR.encode(), b"none", MS_SHARED | MS_REC, None), f"share {NETNS_DIR}")


@contextmanager
def create_named(name: str) -> Iterator[None]:
    """Create the named namespace ``name`` and run the body inside it (this thread only)."""
    path = netns_path(name)
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.close(os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0))
        try:
            _check(_libc.unshare(CLONE_NEWNET), "unshare(CLONE_NEWNET)")
            try:
                _check(_libc.mount(b"/proc/thread-self/ns/net", path.encode(), b"none", MS_BIND, None),
                       f"bind-mount {path}")
            except OSError:
                setns(home)
                raise
        except OSError:
            os.unlink(path)
            raise
        try:
            yield
        finally:
            setns(home)
    finally:
        os.close(home)


def remove_named(name: str) -> bool:
    """Unmount and remove /run/netns/NAME; False when it was not there. The namespace itself goes when
    nothing else holds it (processes in it, open fds)."""
    path = netns_path(name)
    if not os.path.lexists(path):
        return False
    if _libc.umount2(path.encode(), MNT_DETACH) != 0:
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOENT):  # EINVAL: not a mount point (half-made)
            raise OSError(err, f"umount {path}: {os.strerror(err)}")
    os.unlink(path)
    return True
