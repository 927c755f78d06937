"""Root checks and file ownership for runs under sudo."""

from __future__ import annotations

import os
from pathlib import Path

from tunlab.errors import CannotRunHere, NeedRoot


def is_root() -> bool:
    return os.geteuid() == 0


def require_root(action: str) -> None:
    """Raise a one-line NeedRoot error unless we run as root."""
    if not is_root():
        raise NeedRoot(f"{action} needs root (it creates network namespaces, links and TUN devices)",
                       "run it with sudo")


def require_linux_netns() -> None:
    """Raise if this machine cannot make network namespaces."""
    import platform

    if platform.system() != "Linux":
        raise CannotRunHere(f"tunlab needs Linux network namespaces; this is {platform.system()}")
    if not os.path.exists("/proc/self/ns/net"):
        raise CannotRunHere("this kernel has no network namespaces (/proc/self/ns/net is missing)")


def invoking_user() -> tuple[int, int] | None:
    """(uid, gid) of the user who ran sudo, or None when not under sudo."""
    uid = os.environ.get("SUDO_UID")
    gid = os.environ.get("SUDO_GID")
    if os.geteuid() != 0 or not uid or not uid.isdigit():
        return None
    return int(uid), int(gid) if gid and gid.isdigit() else int(uid)


def caller_uid() -> int:
    """The uid of the person behind this process: the sudo user under sudo, else the effective uid."""
    owner = invoking_user()
    return owner[0] if owner else os.geteuid()


def user_name(uid: int) -> str:
    import pwd

    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def chown_to_invoking_user(path: str | os.PathLike[str], *, recursive: bool = True) -> None:
    """Give ``path`` (and, by default, everything below it) to the user who ran sudo."""
    owner = invoking_user()
    if owner is None:
        return
    uid, gid = owner
    p = Path(path)
    if not p.exists():
        return
    paths = [p]
    if recursive and p.is_dir():
        paths.extend(p.rglob("*"))
    for q in paths:
        try:
            os.lchown(q, uid, gid)
        except OSError:
            pass


def make_user_dir(path: str | os.PathLike[str]) -> Path:
    """Create ``path`` and its missing parents, owned by the invoking user under sudo."""
    p = Path(path)
    missing = []
    q = p
    while not q.exists():
        missing.append(q)
        q = q.parent
    p.mkdir(parents=True, exist_ok=True)
    for m in reversed(missing):
        chown_to_invoking_user(m, recursive=False)
    return p
