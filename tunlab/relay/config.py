"""Relay configuration: validated dataclasses and the mapping from TunConnector's options.

Pure code (no root, no sockets): everything here is checked by unit tests. Values are normalised on the
way in (canonical IP strings, networks with host bits cleared) so the engine can compare them directly
with what the kernel reports.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, replace
from typing import Any, Iterable

from tunlab.errors import TunlabError

IFNAME_MAX = 15
_IFNAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")
_PEERNAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,32}$")

TRANSPORTS = ("udp", "tcp")
VNF_KINDS = ("kernel", "hook")
MODES = ("client", "server", "both")
DEFAULT_UNDERLAY_MTU = 1500
ETH_OVERHEAD = 18  # Ethernet header (14) + one VLAN tag (4): what a TAP frame adds to the L3 MTU

# TunConnector's defaults, unchanged
TC_SERVER_IF = "tun1"
TC_CLIENT_IF = "tun0"
TC_SERVER_IP = "192.168.1.2"
TC_CLIENT_IP = "192.168.0.2"
TC_OUTPORT = 55555
TC_INPORT = 55556
TC_MODE = "both"


class ConfigError(TunlabError):
    """A relay option is wrong; the message names the option and the fix."""

    def __init__(self, option: str, message: str, hint: str | None = None) -> None:
        super().__init__(f"{option}: {message}", hint)
        self.option = option


# ---------------------------------------------------------------------------------------------- values


def check_ifname(name: str, option: str = "--dev") -> str:
    """Return ``name`` if it is a safe Linux interface name, else raise ConfigError."""
    if not isinstance(name, str) or not _IFNAME_RE.match(name) or name in (".", ".."):
        raise ConfigError(option, f"{name!r} is not a usable interface name",
                          f"1 to {IFNAME_MAX} characters (at most {IFNAME_MAX}) from A-Z a-z 0-9 _ . -")
    return name


def check_peer_name(name: str, option: str) -> str:
    if not _PEERNAME_RE.match(name):
        raise ConfigError(option, f"peer name {name!r} is not valid", "1 to 32 characters from A-Z a-z 0-9 _ . -")
    return name


def parse_ip(text: str, option: str) -> str:
    """Canonical form of an IPv4/IPv6 address literal (no host names: nothing is resolved)."""
    t = text.strip()
    if t.startswith("[") and t.endswith("]"):
        t = t[1:-1]
    try:
        return str(ipaddress.ip_address(t))
    except ValueError:
        raise ConfigError(option, f"{text!r} is not an IPv4 or IPv6 address",
                          "give a literal address such as 10.0.0.2 or fd00::2") from None


def parse_interface_addr(text: str, option: str) -> str:
    """``ADDR[/PREFIX]`` for the device; a bare IPv4 address means /24 (as TunConnector), bare IPv6 /64."""
    t = text.strip()
    addr, _, plen = t.partition("/")
    ip = parse_ip(addr, option)
    version = ipaddress.ip_address(ip).version
    if not plen:
        plen = "24" if version == 4 else "64"
    maxlen = 32 if version == 4 else 128
    if not plen.isdigit() or not 0 < int(plen) <= maxlen:
        raise ConfigError(option, f"{text!r} has a bad prefix length", f"use ADDR/N with 1 <= N <= {maxlen}")
    return f"{ip}/{int(plen)}"


def parse_port(value: int | str, option: str, *, allow_zero: bool = False) -> int:
    try:
        port = int(value)
    except (TypeError, ValueError):
        raise ConfigError(option, f"{value!r} is not a port number") from None
    low = 0 if allow_zero else 1
    if not low <= port <= 65535:
        raise ConfigError(option, f"port {port} is out of range", f"use {low}..65535")
    return port


def parse_hostport(text: str, option: str, *, allow_zero: bool = False) -> tuple[str, int]:
    """``IP:PORT`` or ``[IPv6]:PORT``."""
    t = text.strip()
    if t.startswith("["):
        host, sep, port = t[1:].partition("]:")
    else:
        host, sep, port = t.rpartition(":")
        if host.count(":") > 0:
            raise ConfigError(option, f"{text!r}: write IPv6 addresses in brackets", "example: [fd00::1]:5000")
    if not sep or not host:
        raise ConfigError(option, f"{text!r} is not IP:PORT", "example: 10.0.0.1:5000 or [fd00::1]:5000")
    return parse_ip(host, option), parse_port(port, option, allow_zero=allow_zero)


def format_hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def ip_version(ip: str) -> int:
    return ipaddress.ip_address(ip).version


# ------------------------------------------------------------------------------------------- records


@dataclass(frozen=True)
class PeerSpec:
    """A peer of the relay.

    ``outgoing`` peers (``--peer``) have a fixed ``ip``/``port``: UDP sends to it and accepts only from it,
    TCP connects to it. Accepted peers (``--accept``) have only an ``ip``: UDP accepts datagrams from that
    address (any port; replies go to the last source port), TCP accepts connections from it. ``ip=None``
    means "the first source that shows up" (TunConnector's server without ``-r``).
    """

    name: str
    ip: str | None
    port: int | None = None
    outgoing: bool = False


@dataclass(frozen=True)
class RouteSpec:
    """Packets whose destination is in ``prefix`` go to peer ``peer``; prefix ``default`` matches all."""

    prefix: str
    peer: str


@dataclass(frozen=True)
class RelayConfig:
    """One relay: one device, one underlay transport, its peers and routes."""

    dev: str = TC_CLIENT_IF
    tap: bool = False
    attach: bool = False
    addr: str | None = None
    mtu: int | None = None
    transport: str = "udp"
    listen: tuple[str, int] | None = None
    peers: tuple[PeerSpec, ...] = ()
    routes: tuple[RouteSpec, ...] = ()
    vnf: str = "kernel"
    hook: str | None = None
    label: str = ""
    datapath: str = "simple"
    psk_file: str | None = None  # --psk-file: every datagram sealed (relay/sealed.py); never the key itself
    seal_keylog: str | None = None  # --seal-keylog: session keys appended here (labs open their captures)
    impair: tuple[tuple[str, str], ...] = ()   # --impair PEER=SPEC: what is sent to PEER is impaired (issue 17)
    link_labels: tuple[tuple[str, str, str], ...] = ()  # --link-label PEER=LINK,DIR: names in logs and streams
    seed: int | None = None                    # --seed: the run seed of the impairments (random when None)
    impair_log: str | None = None              # --impair-log: the decision log (JSON lines)
    nsh_file: str | None = None  # --nsh: NSH mode (relay/sff.py, docs/nsh.md): classifier, SFF, SF proxy

    def __post_init__(self) -> None:
        validate(self)

    # -- derived values
    @property
    def family_version(self) -> int:
        """IP version of the underlay (4 or 6)."""
        for ip in self._underlay_ips():
            return ip_version(ip)
        return 4

    def _underlay_ips(self) -> Iterable[str]:
        if self.listen is not None:
            yield self.listen[0]
        for p in self.peers:
            if p.ip is not None:
                yield p.ip

    @property
    def l2_overhead(self) -> int:
        return ETH_OVERHEAD if self.tap else 0

    def default_mtu(self) -> int:
        """Underlay 1500 minus the encapsulation: IP + UDP header, and the Ethernet header for TAP."""
        ip_hdr = 20 if self.family_version == 4 else 40
        mtu = DEFAULT_UNDERLAY_MTU - ip_hdr - 8
        if self.transport == "tcp":
            mtu = DEFAULT_UNDERLAY_MTU - 28  # framing is not bound by the underlay: same figure for symmetry
        if self.psk_file:
            from .seal import OVERHEAD

            mtu -= OVERHEAD  # a sealed datagram carries a 13-byte header and a 16-byte tag
        if self.nsh_file:
            mtu -= 64  # VXLAN-GPE + NSH (MD type 1, or up to 40 bytes of MD type 2 context): sff.OVERHEAD
        return mtu - (14 if self.tap else 0)

    def effective_mtu(self, device_mtu: int | None = None) -> int:
        if self.mtu is not None:
            return self.mtu
        if self.attach and device_mtu:
            return device_mtu
        return self.default_mtu()

    def to_json(self) -> dict[str, object]:
        return {
            "label": self.label, "dev": self.dev, "tap": self.tap, "attach": self.attach, "addr": self.addr,
            "mtu": self.effective_mtu(), "transport": self.transport,
            "listen": format_hostport(*self.listen) if self.listen else None,
            "peers": [{"name": p.name, "ip": p.ip, "port": p.port, "outgoing": p.outgoing} for p in self.peers],
            "routes": [{"prefix": r.prefix, "peer": r.peer} for r in self.routes],
            "vnf": self.vnf, "hook": self.hook, "datapath": self.datapath, "psk_file": self.psk_file,
            "impair": {p: spec for p, spec in self.impair}, "seed": self.seed, "impair_log": self.impair_log,
            "link_labels": {p: [link, d] for p, link, d in self.link_labels},
            "nsh_file": self.nsh_file,
        }


def validate(cfg: RelayConfig) -> None:
    """Cross-field checks; raise ConfigError naming the option."""
    check_ifname(cfg.dev)
    if cfg.transport not in TRANSPORTS:
        raise ConfigError("--transport", f"{cfg.transport!r} is not one of {', '.join(TRANSPORTS)}")
    if cfg.vnf not in VNF_KINDS:
        raise ConfigError("--vnf", f"{cfg.vnf!r} is not one of {', '.join(VNF_KINDS)}")
    if cfg.vnf == "hook" and not cfg.hook:
        raise ConfigError("--vnf", "hook needs --hook SPEC", "SPEC is path/file.py:func or package.module:func")
    if cfg.hook and cfg.vnf != "hook":
        raise ConfigError("--hook", "a hook needs --vnf hook")
    if cfg.nsh_file and (cfg.transport != "udp" or cfg.tap or cfg.psk_file):
        raise ConfigError("--nsh", "NSH mode runs over UDP between TUN relays, unkeyed (VXLAN-GPE on the wire)",
                          "drop --transport tcp / --tap / --psk-file, or --nsh")
    if cfg.mtu is not None and not 68 <= cfg.mtu <= 65535 - 18:
        raise ConfigError("--mtu", f"{cfg.mtu} is out of range", "use 68..65517")
    if cfg.attach and (cfg.addr or cfg.mtu is not None):
        raise ConfigError("--attach", "an attached device is used as it is: no address and no MTU is set",
                          "drop --addr/-s/-c and --mtu, or drop --attach")
    if cfg.addr is not None:
        parse_interface_addr(cfg.addr, "--addr")
    if not cfg.peers:
        raise ConfigError("--peer", "the relay has no peer", "give --peer NAME=IP:PORT or --accept NAME=IP")
    names: set[str] = set()
    for p in cfg.peers:
        check_peer_name(p.name, "--peer" if p.outgoing else "--accept")
        if p.name in names:
            raise ConfigError("--peer", f"peer name {p.name!r} is used twice")
        names.add(p.name)
        if p.outgoing and (p.ip is None or p.port is None):
            raise ConfigError("--peer", f"peer {p.name!r} needs IP:PORT")
    versions = {ip_version(ip) for ip in cfg._underlay_ips()}
    if len(versions) > 1:
        raise ConfigError("--listen", "the listen address and the peers mix IPv4 and IPv6",
                          "one relay uses one underlay address family")
    accepting = [p for p in cfg.peers if not p.outgoing]
    if accepting and cfg.listen is None:
        raise ConfigError("--accept", "accepting peers needs --listen IP:PORT (where they send or connect)")
    if cfg.transport == "tcp" and cfg.listen is not None and not accepting:
        raise ConfigError("--listen", "a TCP listener with no --accept lets nobody in",
                          "add --accept NAME=IP for each peer that connects")
    for opt, entries in (("--impair", cfg.impair), ("--link-label", cfg.link_labels)):
        for entry in entries:
            if entry[0] not in names:
                raise ConfigError(opt, f"no peer is named {entry[0]!r}", f"peers: {', '.join(sorted(names))}")
    for peer, spec in cfg.impair:
        from .impair import ImpairError, parse_spec

        try:
            parse_spec(spec)
        except ImpairError as exc:
            raise ConfigError("--impair", f"{peer}: {exc.message}", exc.hint) from None
    if cfg.seed is not None and not 0 <= cfg.seed < 2 ** 63:
        raise ConfigError("--seed", f"{cfg.seed} is out of range", "use 0 .. 2**63-1")
    for r in cfg.routes:
        if r.peer not in names:
            raise ConfigError("--route", f"{r.prefix}={r.peer}: no peer is named {r.peer!r}",
                              f"peers: {', '.join(sorted(names))}")
    if len(cfg.peers) > 1 and not cfg.routes:
        raise ConfigError("--route", "with more than one peer, say where packets go",
                          "add --route PREFIX=NAME (PREFIX may be 'default')")


# ----------------------------------------------------------------------------------- option parsing


def parse_peer(text: str) -> PeerSpec:
    name, sep, rest = text.partition("=")
    if not sep:
        raise ConfigError("--peer", f"{text!r} is not NAME=IP:PORT", "example: --peer next=10.0.1.2:5000")
    ip, port = parse_hostport(rest, "--peer")
    return PeerSpec(check_peer_name(name.strip(), "--peer"), ip, port, outgoing=True)


def parse_accept(text: str) -> PeerSpec:
    name, sep, rest = text.partition("=")
    if not sep:
        raise ConfigError("--accept", f"{text!r} is not NAME=IP", "example: --accept prev=10.0.0.1")
    return PeerSpec(check_peer_name(name.strip(), "--accept"), parse_ip(rest, "--accept"))


def parse_impair(text: str) -> tuple[str, str]:
    """``--impair PEER=SPEC`` (SPEC: impair.parse_spec's words, e.g. "delay=20ms loss=1%")."""
    name, sep, spec = text.partition("=")
    if not sep or not name.strip():
        raise ConfigError("--impair", f"{text!r} is not PEER=SPEC", "example: --impair next='delay=20ms loss=1%'")
    return check_peer_name(name.strip(), "--impair"), spec.strip()


def parse_link_label(text: str) -> tuple[str, str, str]:
    """``--link-label PEER=LINK,DIR``: the names the decision log and the random streams use."""
    name, sep, rest = text.partition("=")
    link, comma, direction = rest.partition(",")
    if not sep or not comma or not link or not direction:
        raise ConfigError("--link-label", f"{text!r} is not PEER=LINK,DIR", "example: --link-label next=a-b,a>b")
    return check_peer_name(name.strip(), "--link-label"), link.strip(), direction.strip()


def parse_route(text: str) -> RouteSpec:
    prefix, sep, name = text.rpartition("=")
    if not sep or not prefix or not name:
        raise ConfigError("--route", f"{text!r} is not PREFIX=NAME", "example: --route 10.9.0.0/24=next")
    prefix = prefix.strip()
    if prefix == "default":
        return RouteSpec("default", name.strip())
    try:
        net = ipaddress.ip_network(prefix, strict=True)
    except ValueError as exc:
        hint = None
        try:
            hint = f"did you mean {ipaddress.ip_network(prefix, strict=False)}?"
        except ValueError:
            pass
        raise ConfigError("--route", f"{prefix!r} is not a network prefix ({exc})", hint) from None
    return RouteSpec(str(net), name.strip())


@dataclass
class RelayOptions:
    """The command line as given (TunConnector's options plus the native ones), before mapping."""

    mode: str = TC_MODE
    serverinterface: str = TC_SERVER_IF
    clientinterface: str = TC_CLIENT_IF
    serverip: str = TC_SERVER_IP
    clientip: str = TC_CLIENT_IP
    outport: int = TC_OUTPORT
    inport: int = TC_INPORT
    remoteip: str | None = None
    transport: str = "udp"
    tap: bool = False
    dev: str | None = None
    addr: str | None = None
    attach: bool = False
    mtu: int | None = None
    listen: str | None = None
    peer: tuple[str, ...] = ()
    accept: tuple[str, ...] = ()
    route: tuple[str, ...] = ()
    vnf: str | None = None
    hook: str | None = None
    datapath: str = "auto"
    psk_file: str | None = None
    seal_keylog: str | None = None
    impair: tuple[str, ...] = ()
    link_label: tuple[str, ...] = ()
    seed: int | None = None
    impair_log: str | None = None
    nsh: str | None = None
    explicit: frozenset[str] = frozenset()  # option names the user gave (the rest are defaults)


_TC_ENDPOINT_OPTS = {"mode": "-m", "inport": "-i", "outport": "-o", "remoteip": "-r"}
_TC_DEVICE_OPTS = {"serverinterface": "-p", "clientinterface": "-n", "serverip": "-s", "clientip": "-c"}


def build_configs(o: RelayOptions) -> list[RelayConfig]:
    """Map the command line to one relay (native options, or TunConnector's client/server) or two (both)."""
    if o.mode not in MODES:
        raise ConfigError("-m/--mode", f"{o.mode!r} is not one of {', '.join(MODES)}")
    vnf = o.vnf or ("hook" if o.hook else "kernel")
    common = dict(tap=o.tap, attach=o.attach, mtu=o.mtu, transport=o.transport, vnf=vnf, hook=o.hook,
                  datapath=o.datapath, psk_file=o.psk_file, seal_keylog=o.seal_keylog, nsh_file=o.nsh)
    if o.seal_keylog and not o.psk_file:
        raise ConfigError("--seal-keylog", "logs the keys of a keyed link", "add --psk-file, or drop it")
    routes = tuple(parse_route(r) for r in o.route)
    impairs = [parse_impair(t) for t in o.impair]
    labels = [parse_link_label(t) for t in o.link_label]
    configs = _build_configs(o, common, routes)
    # each --impair / --link-label goes to the relay that has the peer (-m both: server or client)
    out = []
    for c in configs:
        names = {p.name for p in c.peers}
        out.append(replace(c, impair=tuple(i for i in impairs if i[0] in names),
                           link_labels=tuple(x for x in labels if x[0] in names), seed=o.seed,
                           impair_log=o.impair_log))
    known = {p.name for c in configs for p in c.peers}
    for opt, entries in (("--impair", impairs), ("--link-label", labels)):
        for e in entries:
            if e[0] not in known:
                raise ConfigError(opt, f"no peer is named {e[0]!r}", f"peers: {', '.join(sorted(known))}")
    return out


def _build_configs(o: RelayOptions, common: dict[str, Any], routes: tuple[RouteSpec, ...]) -> list[RelayConfig]:
    if o.listen or o.peer or o.accept:
        for opt, flag in {**_TC_ENDPOINT_OPTS, **_TC_DEVICE_OPTS}.items():
            if opt in o.explicit:
                raise ConfigError(flag, "TunConnector's options cannot be mixed with --listen/--peer/--accept",
                                  "use --dev/--addr with the native options, or only TunConnector's")
        listen = parse_hostport(o.listen, "--listen", allow_zero=True) if o.listen else None
        peers = tuple(parse_peer(p) for p in o.peer) + tuple(parse_accept(a) for a in o.accept)
        addr = parse_interface_addr(o.addr, "--addr") if o.addr else None
        dev = check_ifname(o.dev or TC_CLIENT_IF)
        return [RelayConfig(dev=dev, addr=addr, listen=listen, peers=peers, routes=routes, **common)]

    if o.mode == "both" and ("dev" in o.explicit or "addr" in o.explicit):
        raise ConfigError("--dev/--addr", "name one device, and -m both has two",
                          "use -p/-s for the server part and -n/-c for the client part")
    remote = parse_ip(o.remoteip, "-r/--remoteip") if o.remoteip else None
    if o.mode in ("client", "both") and remote is None:
        raise ConfigError("-r/--remoteip", f"-m {o.mode} runs a client part, which needs the server's address",
                          "add -r ADDR" + (", or use -m server" if o.mode == "both" else ""))
    wildcard = "::" if remote is not None and ip_version(remote) == 6 else "0.0.0.0"
    inport = parse_port(o.inport, "-i/--inport")
    outport = parse_port(o.outport, "-o/--outport")
    configs: list[RelayConfig] = []
    if o.mode in ("server", "both"):
        dev = check_ifname(o.dev or o.serverinterface, "--dev" if o.dev else "-p/--serverinterface")
        addr = _tc_addr(o, o.addr, "serverip", o.serverip, "-s/--serverip")
        accept_ip = remote if o.mode == "server" else None
        configs.append(RelayConfig(dev=dev, addr=addr, listen=(wildcard, inport),
                                   peers=(PeerSpec("client", accept_ip),), routes=routes,
                                   label="server" if o.mode == "both" else "", **common))
    if o.mode in ("client", "both"):
        assert remote is not None
        dev = check_ifname(o.dev or o.clientinterface, "--dev" if o.dev else "-n/--clientinterface")
        addr = _tc_addr(o, o.addr, "clientip", o.clientip, "-c/--clientip")
        # UDP: the client's socket is bound to -i so two clients pointed at each other form a tunnel; in
        # `both` mode -i belongs to the server part and the client part sends from an ephemeral port.
        listen = None
        if o.transport == "udp":
            listen = (wildcard, inport if o.mode == "client" else 0)
        configs.append(RelayConfig(dev=dev, addr=addr, listen=listen,
                                   peers=(PeerSpec("server", remote, outport, outgoing=True),), routes=routes,
                                   label="client" if o.mode == "both" else "", **common))
    if len(configs) == 2 and configs[0].dev == configs[1].dev:
        raise ConfigError("-p/-n", f"both parts would use device {configs[0].dev!r}",
                          "give the server part (-p) and the client part (-n) different devices")
    return configs


def _tc_addr(o: RelayOptions, native: str | None, opt: str, value: str, flag: str) -> str | None:
    if native:
        return parse_interface_addr(native, "--addr")
    if o.attach:
        if opt in o.explicit:
            raise ConfigError(flag, "an attached device is used as it is: no address is set", "drop it or --attach")
        return None
    return parse_interface_addr(value, flag)

