"""Root checks and file ownership for runs under sudo."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import IO, Any

from tunlab.errors import CannotRunHere, NeedRoot, TunlabError


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


def _trusted_uids() -> set[int]:
    owner = invoking_user()
    return {0, os.geteuid()} | ({owner[0]} if owner else set())


def _give(name: str, dir_fd: int) -> None:
    """chown one entry tunlab just created (never through a link) to the invoking user."""
    owner = invoking_user()
    if owner is not None:
        try:
            os.chown(name, owner[0], owner[1], dir_fd=dir_fd, follow_symlinks=False)
        except OSError:
            pass


def open_user_dir(path: str | os.PathLike[str]) -> int:
    """Open directory ``path`` (an O_DIRECTORY fd), creating what is missing, owned by the invoking user.

    The path is walked component by component with directory fds. A symbolic link is followed only when it
    belongs to root or to the invoking user, and every directory on the way must belong to one of them too:
    a link or folder planted by another local user (in /tmp, say) is refused in one line instead of
    letting root write, or chown, where it points."""
    full = os.path.abspath(os.fspath(path))
    trusted = _trusted_uids()
    fd = os.open("/", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    walked = ""
    try:
        for comp in [c for c in full.split("/") if c]:
            walked += "/" + comp
            try:
                st = os.stat(comp, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                try:
                    os.mkdir(comp, 0o755, dir_fd=fd)
                    _give(comp, fd)
                except FileExistsError:  # raced with someone: look again
                    pass
                st = os.stat(comp, dir_fd=fd, follow_symlinks=False)
            flags = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
            if stat.S_ISLNK(st.st_mode):
                if st.st_uid not in trusted:
                    raise TunlabError(f"{walked} is a symbolic link owned by uid {st.st_uid}: tunlab does not "
                                      f"follow it (writing {full})", "remove it or choose another folder")
            else:
                flags |= os.O_NOFOLLOW
            try:
                nfd = os.open(comp, flags, dir_fd=fd)
            except OSError as exc:
                raise TunlabError(f"cannot use {walked} as a folder (writing {full}): {exc.strerror}") from None
            os.close(fd)
            fd = nfd
            dst = os.fstat(fd)
            if dst.st_uid not in trusted:
                raise TunlabError(f"{walked} belongs to uid {dst.st_uid}, not to root or to you: tunlab does not "
                                  f"write below it (writing {full})", "choose a folder of your own")
        return fd
    except BaseException:
        os.close(fd)
        raise


def make_user_dir(path: str | os.PathLike[str]) -> Path:
    """Create ``path`` and its missing parents, owned by the invoking user under sudo, without following
    a link or entering a folder that belongs to another user (:func:`open_user_dir`)."""
    os.close(open_user_dir(path))
    return Path(path)


def open_user_file(path: str | os.PathLike[str], mode: str = "wb", *, perm: int = 0o644) -> IO[Any]:
    """A new file at ``path`` for writing (an existing entry of that name is replaced, never followed),
    owned by the invoking user under sudo; its folder is made with :func:`make_user_dir`."""
    p = Path(path)
    dfd = open_user_dir(p.parent)
    try:
        try:
            os.unlink(p.name, dir_fd=dfd)
        except FileNotFoundError:
            pass
        fd = os.open(p.name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, perm, dir_fd=dfd)
    finally:
        os.close(dfd)
    owner = invoking_user()
    if owner is not None:
        try:
            os.fchown(fd, owner[0], owner[1])
        except OSError:
            pass
    return os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"}))


def write_user_file(path: str | os.PathLike[str], data: bytes | str) -> Path:
    """:func:`open_user_file` and write ``data``."""
    with open_user_file(path, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
    return Path(path)


def chown_to_invoking_user(path: str | os.PathLike[str], *, recursive: bool = True) -> None:
    """Give ``path`` (and, by default, what is below it) to the user who ran sudo -- only what tunlab made:
    entries owned by root with one link, reached without following a symbolic link, in folders that
    :func:`open_user_dir` accepts. Anything else (another user's file, a link, a hard link) is left alone."""
    owner = invoking_user()
    if owner is None:
        return
    p = Path(os.path.abspath(os.fspath(path)))
    try:
        dfd = open_user_dir(p.parent)
    except (TunlabError, OSError):
        return
    try:
        try:
            st = os.stat(p.name, dir_fd=dfd, follow_symlinks=False)
        except OSError:
            return
        if stat.S_ISLNK(st.st_mode):
            return
        if st.st_uid == 0 and (stat.S_ISDIR(st.st_mode) or st.st_nlink == 1):
            _give(p.name, dfd)
        if not (recursive and stat.S_ISDIR(st.st_mode)):
            return
        try:
            top = os.open(p.name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
        except OSError:
            return
    finally:
        os.close(dfd)
    try:
        for _root, dirs, files, rfd in os.fwalk(".", dir_fd=top, follow_symlinks=False):
            for name in dirs + files:
                try:
                    est = os.stat(name, dir_fd=rfd, follow_symlinks=False)
                except OSError:
                    continue
                if est.st_uid == 0 and not stat.S_ISLNK(est.st_mode) and (
                        stat.S_ISDIR(est.st_mode) or est.st_nlink == 1):
                    _give(name, rfd)
    finally:
        os.close(top)
