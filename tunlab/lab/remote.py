"""Reaching the hosts of an inventory over OpenSSH (issue 19): the system ``ssh`` client with connection
sharing (ControlMaster), one round trip per host per phase, counted.

A host's ssh command line: ``ssh [-F ssh_config] -o BatchMode=yes -o ConnectTimeout=5 [-l USER] [-p PORT]
TARGET -- COMMAND``. Without an ``ssh_config`` the connection sharing options are tunlab's own
(``ControlMaster=auto``, ``ControlPersist=60``, a socket in ``$TUNLAB_SSH_DIR`` or ``/run/tunlab-ssh``);
with one, the file's own settings apply (the stand-in hosts' set them).

:func:`check_hosts` is ``tunlab hosts check``: one round trip per host (all hosts at once) that reads the
user id, sudo, the clock, the tunlab version and the underlay (the host holds its address and reaches every
other host's), and says each problem in one line naming the host.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

from tunlab.errors import TunlabError
from tunlab.model.hosts import Host, Inventory

T = TypeVar("T")
SSH_UNREACHABLE = 255  # ssh's own exit status when it could not run the command
#: clock skew tolerated between a host and the controller (captures and ledgers compare times)
MAX_SKEW_S = 1.0
INSTALL_HINT = ("install the same tunlab on it (pip install tunlab==VERSION, or `sudo bash scripts/setup.sh` in "
                "a clone) or point the inventory's tunlab= at it")


def local_version() -> str:
    from importlib.metadata import version

    return version("tunlab")


class HostError(TunlabError):
    """A problem with one host: the message starts with ``host NAME``."""


class RoundTrips:
    """How many SSH round trips were made, per host (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.per_host: dict[str, int] = {}

    def add(self, host: str, n: int = 1) -> None:
        with self._lock:
            self.per_host[host] = self.per_host.get(host, 0) + n

    @property
    def total(self) -> int:
        return sum(self.per_host.values())


@dataclass
class Remote:
    """One host, reached with the system ssh."""

    host: Host
    trips: RoundTrips

    @property
    def name(self) -> str:
        return self.host.name

    def ssh_argv(self, command: Sequence[str]) -> list[str]:
        h = self.host
        argv = ["ssh"]
        if h.ssh_config:
            argv += ["-F", h.ssh_config]
        else:
            ctl = os.environ.get("TUNLAB_SSH_DIR") or "/run/tunlab-ssh"
            os.makedirs(ctl, mode=0o700, exist_ok=True)
            argv += ["-o", "ControlMaster=auto", "-o", f"ControlPath={ctl}/%C", "-o", "ControlPersist=60"]
        argv += ["-o", "BatchMode=yes", "-o", "ConnectTimeout=5"]
        if h.user:
            argv += ["-l", h.user]
        if h.port:
            argv += ["-p", str(h.port)]
        return [*argv, h.target, "--", shlex.join(command)]

    def where(self) -> str:
        return f"host {self.name} (ssh {self.host.user + '@' if self.host.user else ''}{self.host.target})"

    def run(self, command: Sequence[str], *, input: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """One round trip; an unreachable host raises :class:`HostError`."""
        self.trips.add(self.name)
        try:
            res = subprocess.run(self.ssh_argv(command), input=input, capture_output=True, text=True,
                                 stdin=None if input is not None else subprocess.DEVNULL, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise HostError(f"{self.where()}: no answer within {timeout:.0f} s") from None
        if res.returncode == SSH_UNREACHABLE:
            raise self.unreachable(res.stderr)
        return res

    def unreachable(self, stderr: str) -> HostError:
        last = [ln for ln in stderr.strip().splitlines() if ln.strip()]
        return HostError(f"{self.where()}: unreachable: {last[-1] if last else 'ssh failed'}",
                         "check ansible_host, ansible_user and ssh_config in the inventory, and `ssh` to it by hand")

    def popen(self, command: Sequence[str]) -> subprocess.Popen[bytes]:
        """A long-lived session (the host agent): stdin and stdout are pipes."""
        self.trips.add(self.name)
        return subprocess.Popen(self.ssh_argv(command), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, start_new_session=True)


def on_all(remotes: Sequence[Remote], fn: Callable[[Remote], T]) -> list[T | BaseException]:
    """``fn`` on every host at once; results (or the exception raised) in the hosts' order."""
    def guarded(r: Remote) -> T | BaseException:
        try:
            return fn(r)
        except BaseException as exc:  # noqa: BLE001 - handed back to the caller, who names the host
            return exc

    with ThreadPoolExecutor(max_workers=max(1, len(remotes))) as pool:
        return list(pool.map(guarded, remotes))


# ------------------------------------------------------------------------------------ tunlab hosts check

_CHECK = r"""
echo "uid $(id -u)"
if [ "$(id -u)" != 0 ]; then sudo -n true 2>/dev/null && echo "sudo ok" || echo "sudo no"; fi
echo "time $(date +%s.%N)"
if command -v {exe} >/dev/null 2>&1; then echo "tunlab $({tunlab} --version 2>&1 | head -n 1)"; else echo "tunlab missing"; fi
if [ -n "$(ip -o addr show to {underlay} 2>/dev/null)" ]; then echo "underlay ok"; else echo "underlay absent"; fi
for ip in {others}; do (ping -c 1 -W 2 -q "$ip" >/dev/null 2>&1 && echo "reach $ip ok" || echo "reach $ip no") & done
wait
"""


def skew_problem(host: str, remote_time: float, t0: float, t1: float) -> str | None:
    """The host's clock read between ``t0`` and ``t1`` (the controller's): a line if it is off by more
    than :data:`MAX_SKEW_S` beyond what the round trip leaves uncertain."""
    skew = remote_time - (t0 + t1) / 2
    if abs(skew) <= MAX_SKEW_S + (t1 - t0) / 2:
        return None
    return (f"host {host}: clock {abs(skew):.1f} s {'ahead of' if skew > 0 else 'behind'} the controller's "
            "(run NTP/chrony on every host)")


def check_script(host: Host, others: Sequence[Host]) -> str:
    words = shlex.split(host.tunlab)
    return _CHECK.format(exe=shlex.quote(words[0]), tunlab=shlex.join(words), underlay=shlex.quote(host.underlay),
                         others=" ".join(shlex.quote(o.underlay) for o in others))


def judge_check(host: Host, out: str, t0: float, t1: float, others: Sequence[Host],
                version: str) -> list[str]:
    """The problems a host's check output shows, one line each (pure: unit-tested)."""
    facts: dict[str, str] = {}
    reach: dict[str, bool] = {}
    for line in out.splitlines():
        key, _, value = line.strip().partition(" ")
        if key == "reach":
            ip, _, ok = value.partition(" ")
            reach[ip] = ok == "ok"
        elif key:
            facts[key] = value
    name = f"host {host.name}"
    problems = []
    if facts.get("uid") != "0" and (not host.become or facts.get("sudo") != "ok"):
        problems.append(f"{name}: not root" + (" and `sudo -n` fails" if host.become else "")
                        + " (log in as root, or set become=true with passwordless sudo for tunlab)")
    tl = facts.get("tunlab", "missing")
    if tl == "missing":
        problems.append(f"{name}: tunlab missing (no command '{host.tunlab}'): "
                        + INSTALL_HINT.replace("VERSION", version))
    else:
        remote_version = tl.rsplit(" ", 1)[-1]
        if remote_version != version:
            problems.append(f"{name}: tunlab {remote_version} there, {version} here: "
                            + INSTALL_HINT.replace("VERSION", version))
    try:
        remote_time = float(facts["time"])
    except (KeyError, ValueError):
        problems.append(f"{name}: could not read its clock")
    else:
        skew = skew_problem(host.name, remote_time, t0, t1)
        if skew:
            problems.append(skew)
    if facts.get("underlay") != "ok":
        problems.append(f"{name}: underlay {host.underlay} is not an address of this host "
                        "(fix underlay= in the inventory)")
    for o in others:
        if not reach.get(o.underlay, False):
            problems.append(f"{name}: cannot reach host {o.name}'s underlay {o.underlay} (ping) "
                            "(check the address and the firewall between them)")
    return problems


def check_hosts(inv: Inventory, trips: RoundTrips | None = None) -> list[str]:
    """``tunlab hosts check``: one round trip per host, all at once; one line per problem (none = ready)."""
    trips = trips or RoundTrips()
    version = local_version()

    def one(r: Remote) -> list[str]:
        others = [h for h in inv.hosts if h.name != r.name]
        t0 = time.time()
        res = r.run(["sh", "-c", check_script(r.host, others)], timeout=30)
        t1 = time.time()
        return judge_check(r.host, res.stdout, t0, t1, others, version)

    problems: list[str] = []
    for got in on_all([Remote(h, trips) for h in inv.hosts], one):
        if isinstance(got, TunlabError):
            problems.append(got.message)
        elif isinstance(got, BaseException):
            raise got
        else:
            problems += got
    return problems

