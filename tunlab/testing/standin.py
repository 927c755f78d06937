"""Stand-in hosts: several "machines" on one, for testing labs across hosts (issue 19).

Each stand-in host is a sandbox with its own network, mount and PID namespaces: a private ``/run`` (so its
named network namespaces and its tunlab run directories are its own, as on a separate machine) and its own
``/proc``, running Debian's OpenSSH server as its first process. The hosts are joined by a bridge in a LAN
namespace (``tls-<id>-lan``, MTU 1380), each at an underlay address of ``10.77.0.0/24`` (``h1`` = .1, ...).
The system ``ssh`` reaches them with connection sharing (ControlMaster) through a ProxyCommand that enters the
host's network namespace (``nsenter`` + ``socat``): nothing is addressed in the root namespace.

    python -m tunlab.testing.standin up -n 2 --dir DIR     # prints DIR/hosts.ini (the inventory)
    python -m tunlab.testing.standin down --dir DIR        # everything the set made, by its state file
    scripts/standin.sh up|down ...                          # the same

Ownership like a lab's: a state file (``DIR/standin.json``) records the set's id, its LAN namespace and the
pid and start time of every sandbox and ssh master *before* they are used; ``down`` stops exactly those
(killing a sandbox's first process ends every process inside it, and with its mount namespace go its
private namespaces) and removes the LAN namespace by its ``tls-<id>-`` prefix.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import socket
import string
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunlab.errors import TunlabError
from tunlab.lab.ledger import stop_processes
from tunlab.system import netns
from tunlab.system.procs import proc_start_time, process_alive

PREFIX = "tls-"
SUBNET = "10.77.0"
SSHD = "/usr/sbin/sshd"
STATE = "standin.json"
ENV_TAG = "TUNLAB_STANDIN"
LAN_MTU = 1380  # neither the veth default nor a usual uplink's: the MTU fitted to it is visibly the LAN's


def _run(argv: Sequence[str], what: str, **kw: Any) -> str:
    res = subprocess.run(list(argv), capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60, **kw)
    if res.returncode != 0:
        raise TunlabError(f"stand-in hosts: {what} failed: {(res.stderr or res.stdout).strip()[:300]}")
    return res.stdout


def _wait(cond: Any, what: str, timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = cond()
        if got:
            return got
        if time.monotonic() > deadline:
            raise TunlabError(f"stand-in hosts: timed out waiting for {what}")
        time.sleep(0.01)


@dataclass
class StandinHost:
    name: str
    addr: str
    pid: int = 0          # the sandbox's first process (sshd, pid 1 inside), in the root's numbering
    start: int | None = None
    unshare_pid: int = 0
    unshare_start: int | None = None
    master_pid: int = 0   # the ssh ControlMaster serving this host
    master_start: int | None = None

    @property
    def netns_file(self) -> str:
        return f"/proc/{self.pid}/ns/net"


@dataclass
class StandinSet:
    """A set of stand-in hosts; ``dir`` holds its keys, configs, state file and inventory."""

    dir: Path
    id: str = ""
    hosts: list[StandinHost] = field(default_factory=list)

    @property
    def lan_netns(self) -> str:
        return f"{PREFIX}{self.id}-lan"

    @property
    def inventory(self) -> Path:
        return self.dir / "hosts.ini"

    @property
    def ssh_config(self) -> Path:
        return self.dir / "ssh_config"

    def host(self, name: str) -> StandinHost:
        for h in self.hosts:
            if h.name == name:
                return h
        raise KeyError(name)

    # ------------------------------------------------------------------ state
    def save(self) -> None:
        data = {"id": self.id, "lan_netns": self.lan_netns, "hosts": [h.__dict__ for h in self.hosts]}
        tmp = self.dir / f"{STATE}.tmp"
        tmp.write_text(json.dumps(data, indent=1))
        os.replace(tmp, self.dir / STATE)

    @classmethod
    def load(cls, dir: str | os.PathLike[str]) -> StandinSet:
        d = Path(dir)
        try:
            data = json.loads((d / STATE).read_text())
        except (OSError, ValueError) as exc:
            raise TunlabError(f"{d / STATE}: not a stand-in set's state file ({exc})") from None
        return cls(d, str(data["id"]), [StandinHost(**h) for h in data.get("hosts", [])])

    # ------------------------------------------------------------------ ssh
    def ssh_argv(self, host: str, *argv: str) -> list[str]:
        return ["ssh", "-F", str(self.ssh_config), host, *argv]

    def ssh(self, host: str, command: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.ssh_argv(host, command), capture_output=True, text=True,
                              stdin=subprocess.DEVNULL, timeout=timeout)


def up(n: int, dir: str | os.PathLike[str], *, tunlab_cmd: str | None = None) -> StandinSet:
    """Make ``n`` stand-in hosts ``h1``..``hN`` and their LAN; write the inventory. On failure, everything
    made so far is removed again."""
    if shutil.which("sshd", path="/usr/sbin:/usr/bin") is None:
        raise TunlabError("stand-in hosts need Debian's openssh-server (/usr/sbin/sshd)",
                          "apt-get install openssh-server (scripts/setup.sh installs it)")
    d = Path(dir)
    d.mkdir(parents=True, exist_ok=True)
    os.chmod(d, 0o700)
    if (d / STATE).exists():
        raise TunlabError(f"{d / STATE} exists: that set is still up", f"python -m tunlab.testing.standin down --dir {d}")
    alphabet = string.ascii_lowercase + string.digits
    sset = StandinSet(d, secrets.choice(string.ascii_lowercase) + "".join(secrets.choice(alphabet) for _ in range(3)))
    sset.hosts = [StandinHost(f"h{i}", f"{SUBNET}.{i}") for i in range(1, n + 1)]
    sset.save()  # the id (so the LAN namespace's prefix) before anything exists
    try:
        _make(sset, tunlab_cmd or str(Path(sys.executable).parent / "tunlab"))
    except BaseException:
        down(sset)
        raise
    return sset


def _make(sset: StandinSet, tunlab_cmd: str) -> None:
    d = sset.dir
    for key in ("host_key", "client_key"):
        if not (d / key).exists():
            _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"tunlab-standin-{sset.id}", "-f",
                  str(d / key)], "ssh-keygen")
    (d / "authorized_keys").write_text((d / "client_key.pub").read_text())
    host_pub = (d / "host_key.pub").read_text().split()
    (d / "known_hosts").write_text("".join(f"{h.name} {host_pub[0]} {host_pub[1]}\n" for h in sset.hosts))
    (d / "sshd_config").write_text(
        f"Port 22\nListenAddress 0.0.0.0\nHostKey {d}/host_key\nAuthorizedKeysFile {d}/authorized_keys\n"
        "PermitRootLogin prohibit-password\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        "UsePAM no\nStrictModes no\nPidFile none\nLogLevel ERROR\nMaxSessions 100\nMaxStartups 100\n"
        "AcceptEnv LANG\nSubsystem sftp internal-sftp\n")
    netns.share_netns_dir()
    _run(["ip", "netns", "add", sset.lan_netns], "making the LAN namespace")
    lan = ["ip", "-n", sset.lan_netns]
    _run([*lan, "link", "add", "br0", "type", "bridge"], "making the LAN bridge")
    _run([*lan, "link", "set", "br0", "up"], "bridge up")
    _run([*lan, "link", "set", "lo", "up"], "lo up")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUNLAB_RUN")}
    env[ENV_TAG] = sset.id
    # a fresh tmpfs on /run (named namespaces, tunlab's run directories, sshd's privilege separation)
    inner = ("hostname \"$0\" && mount -t tmpfs -o mode=755 tunlab-standin /run && mkdir -p /run/sshd /run/netns && "
             f"ip link set lo up && exec {SSHD} -D -e -f {d}/sshd_config")
    for h in sset.hosts:
        log = open(d / f"{h.name}.sshd.log", "ab")
        p = subprocess.Popen(["unshare", "--net", "--mount", "--pid", "--uts", "--fork", "--mount-proc",
                              "--propagation", "private", "--", "sh", "-c", inner, h.name],
                             stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env, start_new_session=True)
        log.close()
        h.unshare_pid, h.unshare_start = p.pid, proc_start_time(p.pid)
        sset.save()
        child = _wait(lambda: _children(p.pid), f"host {h.name}'s sandbox")
        h.pid = child[0]
        h.start = proc_start_time(h.pid)
        sset.save()
        _run([*lan, "link", "add", h.name, "mtu", str(LAN_MTU), "type", "veth", "peer", "name", "eth0", "mtu",
              str(LAN_MTU), "netns", str(h.pid)], f"host {h.name}'s LAN link")
        _run([*lan, "link", "set", h.name, "master", "br0", "up"], f"host {h.name}'s bridge port")
        host_ip = ["nsenter", f"--net={h.netns_file}", "--", "ip"]
        _run([*host_ip, "addr", "add", f"{h.addr}/24", "dev", "eth0"], f"host {h.name}'s address")
        _run([*host_ip, "link", "set", "eth0", "up"], f"host {h.name}'s LAN link up")
    for h in sset.hosts:  # sshd is the sandbox's first process: wait until it execs and listens
        _wait(lambda: _listening(h), f"host {h.name}'s sshd (log: {d}/{h.name}.sshd.log)")
    proxy = "nsenter --net=/proc/{pid}/ns/net -- socat STDIO TCP:127.0.0.1:22"
    (d / "ssh_config").write_text("".join(
        f"Host {h.name}\n  HostName {h.name}\n  HostKeyAlias {h.name}\n  User root\n"
        f"  IdentityFile {d}/client_key\n  IdentitiesOnly yes\n  UserKnownHostsFile {d}/known_hosts\n"
        f"  StrictHostKeyChecking yes\n  BatchMode yes\n  ProxyCommand {proxy.format(pid=h.pid)}\n"
        f"  ControlMaster auto\n  ControlPath {d}/cm-%n\n  ControlPersist 600\n  LogLevel ERROR\n\n"
        for h in sset.hosts))
    for h in sset.hosts:
        res = sset.ssh(h.name, "true")
        if res.returncode != 0:
            raise TunlabError(f"stand-in host {h.name}: ssh failed: {res.stderr.strip()[:300]}")
        out = subprocess.run(sset.ssh_argv(h.name)[:-1] + ["-O", "check", h.name], capture_output=True, text=True,
                             stdin=subprocess.DEVNULL, timeout=30)
        m = re.search(r"pid=(\d+)", out.stderr + out.stdout)
        if m:
            h.master_pid = int(m.group(1))
            h.master_start = proc_start_time(h.master_pid)
            sset.save()
    write_inventory(sset, tunlab_cmd)


def write_inventory(sset: StandinSet, tunlab_cmd: str) -> Path:
    """An Ansible-style inventory for the set (docs/multihost.md)."""
    lines = [f"# stand-in hosts {sset.id} (python -m tunlab.testing.standin; the sandboxes share this machine's",
             "# files, so the tunlab command is this checkout's)",
             "[all:vars]", f"ssh_config={sset.ssh_config}", f"tunlab={tunlab_cmd}", "", "[hosts]"]
    lines += [f"{h.name} ansible_host={h.name} underlay={h.addr}" for h in sset.hosts]
    sset.inventory.write_text("\n".join(lines) + "\n")
    return sset.inventory


def _children(pid: int) -> list[int]:
    try:
        return [int(x) for x in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _listening(h: StandinHost) -> bool:
    try:
        if os.readlink(f"/proc/{h.pid}/exe") != SSHD:  # still the shell that mounts /run
            return False
        with netns.socket_in(h.netns_file, socket.AF_INET, socket.SOCK_STREAM) as s:
            s.settimeout(1)
            return s.connect_ex(("127.0.0.1", 22)) == 0
    except OSError:
        return False


def down(target: StandinSet | str | os.PathLike[str]) -> list[str]:
    """Remove a set: its ssh masters, its sandboxes (and so everything inside them), its LAN namespace,
    its state file. Returns one line per problem (nothing = all gone)."""
    sset = target if isinstance(target, StandinSet) else StandinSet.load(target)
    problems = []
    for h in sset.hosts:
        if h.master_pid and process_alive(h.master_pid, h.master_start):
            subprocess.run(sset.ssh_argv(h.name)[:-1] + ["-O", "exit", h.name], capture_output=True,
                           stdin=subprocess.DEVNULL, timeout=30)
    targets = [(h.master_pid, h.master_start) for h in sset.hosts if h.master_pid]
    targets += [(h.pid, h.start) for h in sset.hosts if h.pid]  # pid 1 inside: its end ends the sandbox
    targets += [(h.unshare_pid, h.unshare_start) for h in sset.hosts if h.unshare_pid]
    stop_processes(targets, timeout=2.0)  # by pid and start time: never someone else's reused pid
    problems += [f"stand-in hosts: process {pid} is still alive" for pid, start in targets
                 if process_alive(pid, start)]
    if sset.id and os.path.lexists(netns.netns_path(sset.lan_netns)):
        try:
            netns.remove_named(sset.lan_netns)
        except OSError as exc:
            problems.append(f"namespace {sset.lan_netns}: {exc}")
    for p in sset.dir.glob("cm-*"):
        p.unlink(missing_ok=True)
    if not problems:
        (sset.dir / STATE).unlink(missing_ok=True)
    return problems


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tunlab.testing.standin", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("up", help="make stand-in hosts and print their inventory's path")
    a.add_argument("-n", type=int, default=2, help="how many hosts (h1..hN)")
    a.add_argument("--dir", required=True, help="folder for keys, configs, state and inventory (made 0700)")
    a.add_argument("--tunlab", help="the tunlab command on the hosts (default: this Python's)")
    b = sub.add_parser("down", help="remove a set by its state file")
    b.add_argument("--dir", required=True)
    args = ap.parse_args(argv)
    try:
        if args.cmd == "up":
            print(up(args.n, args.dir, tunlab_cmd=args.tunlab).inventory)
            return 0
        problems = down(args.dir)
        for p in problems:
            print(f"standin: {p}", file=sys.stderr)
        return 1 if problems else 0
    except TunlabError as exc:
        print(f"standin: {exc.message}" + (f" ({exc.hint})" if exc.hint else ""), file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
