"""Hosts a lab may span (issue 19): the inventory file, and where each node goes (placement).

An inventory is an Ansible-style INI file (docs/multihost.md)::

    [all:vars]
    ssh_config=/path/ssh_config      # optional: ssh -F FILE (its Host entries, ProxyCommand, ControlMaster...)
    tunlab=tunlab                    # optional: the tunlab command on the hosts (default: tunlab)

    [hosts]                          # any group name; every group's hosts are the lab's hosts
    h1 ansible_host=10.0.0.11 underlay=10.0.0.11
    h2 ansible_host=h2.example ansible_user=lab become=true underlay=10.0.0.12

Per host: ``ansible_host`` (the SSH target; default the name), ``ansible_user``, ``ansible_port``,
``underlay`` (required: the address the other hosts reach this one at; links between hosts are relay hops
over it), ``tunlab`` (the command), ``become`` (``true``: run tunlab through ``sudo -n``), ``ssh_config``.
Values in ``[all:vars]`` (or ``[GROUP:vars]``) apply to every host (of that group) that does not set them.
Pure: no SSH here (that is :mod:`tunlab.lab.remote`).
"""

from __future__ import annotations

import ipaddress
import os
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

from tunlab.errors import DescriptionError

KNOWN = ("ansible_host", "ansible_user", "ansible_port", "underlay", "tunlab", "become", "ssh_config")
_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,30}$")
TRUE = ("1", "true", "yes", "on")
FALSE = ("0", "false", "no", "off", "")


def _err(message: str, hint: str | None = None) -> DescriptionError:
    return DescriptionError(message, hint=hint)


@dataclass(frozen=True)
class Host:
    name: str
    target: str             # ssh destination
    underlay: str           # the address other hosts reach this one at
    user: str | None = None
    port: int | None = None
    tunlab: str = "tunlab"  # the command (may be several words: "python3 -m tunlab")
    become: bool = False
    ssh_config: str | None = None

    def tunlab_argv(self) -> list[str]:
        return (["sudo", "-n"] if self.become else []) + shlex.split(self.tunlab)


@dataclass(frozen=True)
class Inventory:
    path: str
    hosts: tuple[Host, ...]

    def host(self, name: str) -> Host:
        for h in self.hosts:
            if h.name == name:
                return h
        raise _err(f"{self.path}: there is no host '{name}'",
                               f"hosts: {', '.join(h.name for h in self.hosts)}")

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(h.name for h in self.hosts)


def parse_inventory(text: str, path: str = "<inventory>") -> Inventory:
    """Parse an inventory; every error names the file, line, host and field."""
    group_vars: dict[str, dict[str, str]] = {}
    rows: list[tuple[int, str, str, dict[str, str]]] = []  # line, group, host, vars
    section = "ungrouped"
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].split(";", 1)[0].strip() if not raw.lstrip().startswith(("#", ";")) else ""
        if not line:
            continue
        where = f"{path} line {lineno}"
        if line.startswith("["):
            if not line.endswith("]"):
                raise _err(f"{where}: a section header needs a closing ']'", "e.g. [hosts]")
            section = line[1:-1].strip()
            if section.endswith(":children"):
                raise _err(f"{where}: [{section}] (groups of groups) is not supported",
                                       "list the hosts in a plain [GROUP] section")
            continue
        try:
            words = shlex.split(line)
        except ValueError as exc:
            raise _err(f"{where}: {exc}", "quote values with spaces") from None
        if section.endswith(":vars"):
            key, eq, value = line.partition("=")
            if not eq:
                raise _err(f"{where}: [{section}] holds KEY=VALUE lines", f"got {line!r}")
            group_vars.setdefault(section[:-5], {})[key.strip()] = value.strip()
            continue
        name, items = words[0], words[1:]
        if not _NAME_RE.match(name):
            raise _err(f"{where}: host name {name!r} is not usable",
                                   "a letter, then letters, digits, '_', '.', '-' (31 at most)")
        hv: dict[str, str] = {}
        for item in items:
            key, eq, value = item.partition("=")
            if not eq:
                raise _err(f"{where}: host {name}: {item!r} is not KEY=VALUE")
            hv[key] = value
        rows.append((lineno, section, name, hv))
    if not rows:
        raise _err(f"{path}: no hosts", "list hosts under a [hosts] section: NAME underlay=ADDR ...")
    hosts: list[Host] = []
    seen: dict[str, int] = {}
    for lineno, group, name, hv in rows:
        where = f"{path} line {lineno}: host {name}"
        if name in seen:
            raise _err(f"{where}: listed twice (first on line {seen[name]})")
        seen[name] = lineno
        v = {**group_vars.get("all", {}), **group_vars.get(group, {}), **hv}
        for key in v:
            if key not in KNOWN and not key.startswith("ansible_"):
                raise _err(f"{where}: unknown field '{key}'", f"known: {', '.join(KNOWN)}")
        underlay = v.get("underlay", "")
        if not underlay:
            raise _err(f"{where}: no 'underlay' field",
                                   "add underlay=ADDR: the address the other hosts reach this one at")
        try:
            ipaddress.ip_address(underlay)
        except ValueError:
            raise _err(f"{where}: field 'underlay': {underlay!r} is not an IP address") from None
        port = v.get("ansible_port")
        if port is not None and not (port.isdigit() and 0 < int(port) < 65536):
            raise _err(f"{where}: field 'ansible_port': {port!r} is not a port number")
        become = v.get("become", "false").lower()
        if become not in TRUE + FALSE:
            raise _err(f"{where}: field 'become': {become!r}", "true or false")
        cfg = v.get("ssh_config")
        if cfg:
            cfg = str((Path(path).parent / cfg) if not os.path.isabs(cfg) else Path(cfg))
        hosts.append(Host(name=name, target=v.get("ansible_host") or name, underlay=underlay,
                          user=v.get("ansible_user") or None, port=int(port) if port else None,
                          tunlab=v.get("tunlab") or "tunlab", become=become in TRUE, ssh_config=cfg or None))
    unders = [h.underlay for h in hosts]
    dup = {u for u in unders if unders.count(u) > 1}
    if dup:
        raise _err(f"{path}: field 'underlay': {', '.join(sorted(dup))} given to more than one host",
                               "each host needs its own underlay address")
    return Inventory(path, tuple(hosts))


def load_inventory(path: str | os.PathLike[str]) -> Inventory:
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise _err(f"{p}: cannot read the inventory: {exc.strerror or exc}",
                               "give --hosts an inventory file (docs/multihost.md)") from None
    return parse_inventory(text, str(p))
