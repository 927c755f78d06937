"""``tunlab relay`` and ``tunlab relay-stats``: thin click layers over tunlab.relay."""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import Any, Sequence

import click
from click.core import ParameterSource

from .config import (MODES, TC_CLIENT_IF, TC_CLIENT_IP, TC_INPORT, TC_MODE, TC_OUTPORT, TC_SERVER_IF,
                     TC_SERVER_IP, TRANSPORTS, VNF_KINDS, ConfigError, RelayConfig, RelayOptions, build_configs)

RELAY_HELP = """TUN/TAP <-> UDP/TCP relay; TunConnector's command line works unchanged.

\b
The relay links one TUN (L3, default) or TAP (--tap) device with its peers.
UDP (default): one packet per datagram, no header (socat's
TUN + UDP-DATAGRAM format); between two tunlab relays, whole GSO
packets cut into chunks (see Datapath below). TCP (--transport tcp):
each packet is sent as a 2-byte big-endian length and the packet
(simpletun / TunConnector framing), one write per frame,
TCP_NODELAY; a client retries with
backoff until the server is up and reconnects after a drop; a server
keeps accepting after its peer leaves (a new connection from the peer
replaces the old one).

\b
TunConnector options (-m picks the role):
  server  device -p with address -s; listens on -i. Accepts the peer
          at -r if given, else the first source that shows up (its IP,
          from then on). UDP replies go to the peer's last source port.
  client  device -n with address -c; sends to / connects to -r:-o.
          UDP: its socket is bound to -i, so two clients pointed at
          each other (-i/-o swapped) form a tunnel.
  both    (default) a server part (-p, -s, -i) and a client part
          (-n, -c, to -r:-o), each with its own device. With UDP the
          client part sends from an ephemeral port.
A bare address gets /24 (IPv6: /64). Example (TunConnector's own):
  tunlab relay -p tun0 -s 10.0.0.2 -i 55555 -m server
  tunlab relay -n tun0 -c 10.0.0.1 -r SERVER_IP -o 55555 -m client

\b
Native options (the lab uses these; not mixable with -m/-i/-o/-r/-p/-n/-s/-c):
  --listen IP:PORT   UDP: bind there; TCP: listen there.
  --peer N=IP:PORT   UDP: send to it, accept only from exactly it;
                     TCP: connect to it (backoff, reconnect).
  --accept N=IP      UDP: accept from that IP, any port; TCP: accept
                     connections from that IP as peer N.
  --route PREFIX=N   packets leaving the device (or a hook) go to the
                     peer of the longest matching prefix (IPv4 and IPv6;
                     'default' matches all). One peer: all go to it.
                     TAP: the frame's IP destination or ARP target.
  --vnf kernel       packets from peers are written to the device; the
                     namespace's kernel acts on them, and what it routes
                     back out of the device goes on by --route.
  --vnf hook --hook SPEC   packets from peers go to FUNC(bytes) ->
                     bytes | None (drop), then by --route (or into the
                     device if addressed to the device's own address).
                     SPEC: path/file.py:func or package.module:func.

\b
Only peers get in: other sources, malformed packets (empty, over the
MTU, not IPv4/IPv6 on a TUN) and bad TCP lengths (0, or larger than any
packet: that connection is closed) are dropped and counted by reason.

\b
Datapath (--datapath; over TCP and on --tap, auto means simple):
  auto    (default) says hello to each peer (a 44-byte IPv4 packet
          with a wrong header checksum, which a plain peer's kernel
          drops): 'gso' toward tunlab relays that answer, 'plain'
          toward the others (socat, TunConnector-style peers). The
          choice is logged at info level and shown in the ready line
          and the counters ("datapath").
  plain   one packet per datagram (socat's format), batched with UDP
          GSO/GRO; no hellos. Works with any peer.
  gso     whole TSO/GSO super-packets (up to 64 KiB) as MTU-size
          chunks; tunlab relays only (docs/fastpath.md).
  simple  the reference loop: one packet per read and per datagram.
--vnf hook: a hook sees one packet at a time, so auto/gso mean plain.

\b
MTU default: 1500 minus IP+UDP headers (1472 over IPv4, 1452 over IPv6;
TCP: 1472; TAP: 14 less). Peers with MTU 1500 (simpletun, TunConnector,
socat): pass --mtu 1500 on both ends or lower theirs.
Counters (relay's view: dev rx = read from the device, tx = written to
it; peer rx = received from it) come from --control (see
'tunlab relay-stats'), --stats-file (on exit and SIGUSR1), and are
printed on exit. SIGTERM/SIGINT stop it cleanly; a device it created
disappears with it.
"""


@click.command("relay", help=RELAY_HELP, context_settings={"help_option_names": ["-h", "--help"],
                                                          "max_content_width": 100})
@click.option("-p", "--serverinterface", default=TC_SERVER_IF, show_default=True, metavar="NAME",
              help="server part's device")
@click.option("-n", "--clientinterface", default=TC_CLIENT_IF, show_default=True, metavar="NAME",
              help="client part's device")
@click.option("-s", "--serverip", default=TC_SERVER_IP, show_default=True, metavar="ADDR[/P]",
              help="server part's device address")
@click.option("-c", "--clientip", default=TC_CLIENT_IP, show_default=True, metavar="ADDR[/P]",
              help="client part's device address")
@click.option("-o", "--outport", default=TC_OUTPORT, show_default=True, type=int, metavar="PORT",
              help="port the client sends to / connects to")
@click.option("-i", "--inport", default=TC_INPORT, show_default=True, type=int, metavar="PORT",
              help="port the server listens on (UDP client: its bound port)")
@click.option("-r", "--remoteip", default=None, metavar="ADDR", help="the other end's underlay address")
@click.option("-m", "--mode", default=TC_MODE, show_default=True, type=click.Choice(MODES))
@click.option("--transport", default="udp", show_default=True, type=click.Choice(TRANSPORTS))
@click.option("--tap", is_flag=True, help="L2 TAP device instead of an L3 TUN")
@click.option("--dev", default=None, metavar="NAME", help="device name (overrides -p/-n)")
@click.option("--addr", default=None, metavar="ADDR/PREFIX", help="device address (overrides -s/-c)")
@click.option("--attach", is_flag=True, help="use an existing persistent device as it is")
@click.option("--mtu", default=None, type=int, metavar="N", help="device MTU (default: see above)")
@click.option("--listen", default=None, metavar="IP:PORT")
@click.option("--peer", multiple=True, metavar="NAME=IP:PORT")
@click.option("--accept", multiple=True, metavar="NAME=IP")
@click.option("--route", multiple=True, metavar="PREFIX=NAME")
@click.option("--vnf", default=None, type=click.Choice(VNF_KINDS), help="chain role [default: kernel]")
@click.option("--hook", default=None, metavar="SPEC", help="path/file.py:func or package.module:func")
@click.option("--ready-fd", default=None, type=int, metavar="N",
              help='write {"ready": true, "pid", "dev", "listen"} to fd N once up, then close it')
@click.option("--control", default=None, metavar="PATH", help='unix socket answering "stats" with counters')
@click.option("--control-group", default=None, metavar="GROUP",
              help="the control socket is root-only (0600) unless a group is given: then 0660 for that group")
@click.option("--stats-file", default=None, metavar="PATH", help="counters JSON written on exit and SIGUSR1")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"]), help="nothing per packet above debug")
@click.option("--log-file", default=None, metavar="PATH")
@click.option("--datapath", default="auto", show_default=True, metavar="NAME",
              help="auto|plain|gso|simple: how packets are moved (see above)")
@click.option("--psk-file", default=None, metavar="PATH",
              help="seal every datagram (TCP: frame) with the 32-byte key in PATH (mode 0600; tunlab peers "
                   "only: not socat, simpletun or TunConnector)")
@click.option("--seal-keylog", default=None, metavar="PATH",
              help="append each session's keys to PATH (0600) so captures can be opened (labs, debugging)")
@click.option("--impair", multiple=True, metavar="PEER=SPEC",
              help="impair what is sent to PEER: delay=20ms jitter=5ms loss=1%% duplicate= reorder= corrupt= "
                   "rate=10mbit limit= slot= flap=UP/DOWN (issue 17; the peer gets the per-packet datapath)")
@click.option("--link-label", multiple=True, metavar="PEER=LINK,DIR",
              help="the link and direction names of PEER's path in the decision log and the random streams")
@click.option("--seed", default=None, type=int, metavar="N", help="run seed of the impairments (default: random)")
@click.option("--impair-log", default=None, metavar="PATH", help="decision log of the impairments (JSON lines)")
@click.option("--nsh", default=None, metavar="FILE",
              help="NSH mode (RFC 8300 over VXLAN-GPE): classifier, SFF, SF proxy from the JSON FILE (docs/nsh.md)")
@click.option("--print-config", is_flag=True, help="print the resulting configuration as JSON and exit")
def relay_cmd(**kw: Any) -> None:
    ctx = click.get_current_context()
    configs = configs_from_params(ctx, kw)
    if kw["print_config"]:
        click.echo(json.dumps([c.to_json() for c in configs], indent=2))
        return
    ready_fd = kw["ready_fd"]
    if ready_fd is not None:
        try:
            os.fstat(ready_fd)
        except OSError:
            raise ConfigError("--ready-fd", f"{ready_fd} is not an open file descriptor") from None
    _setup_logging(kw["log_level"], kw["log_file"])
    from .engine import Relay, serve
    from .loop import Loop

    loop = Loop()
    relays = [Relay(c, loop=loop) for c in configs]
    final = serve(relays, ready_fd=ready_fd, control=kw["control"], stats_file=kw["stats_file"],
                  control_group=kw["control_group"])
    click.echo(summary(final, [c.label or c.dev for c in configs]), err=True)


def configs_from_params(ctx: click.Context, kw: dict[str, Any]) -> list[RelayConfig]:
    explicit = frozenset(name for name in kw if ctx.get_parameter_source(name) in
                         (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT))
    opts = RelayOptions(
        mode=kw["mode"], serverinterface=kw["serverinterface"], clientinterface=kw["clientinterface"],
        serverip=kw["serverip"], clientip=kw["clientip"], outport=kw["outport"], inport=kw["inport"],
        remoteip=kw["remoteip"], transport=kw["transport"], tap=kw["tap"], dev=kw["dev"], addr=kw["addr"],
        attach=kw["attach"], mtu=kw["mtu"], listen=kw["listen"], peer=tuple(kw["peer"]),
        accept=tuple(kw["accept"]), route=tuple(kw["route"]), vnf=kw["vnf"], hook=kw["hook"],
        datapath=kw["datapath"], psk_file=kw["psk_file"],
        seal_keylog=kw["seal_keylog"], impair=tuple(kw.get("impair") or ()),
        link_label=tuple(kw.get("link_label") or ()), seed=kw.get("seed"), impair_log=kw.get("impair_log"),
        nsh=kw["nsh"], explicit=explicit)
    return build_configs(opts)


def configs_from_args(argv: Sequence[str]) -> list[RelayConfig]:
    """Parse a ``tunlab relay`` command line into configurations without running anything."""
    ctx = relay_cmd.make_context("relay", list(argv))
    with ctx:
        return configs_from_params(ctx, dict(ctx.params))


def summary(counters: dict[str, Any], labels: list[str]) -> str:
    parts = counters if len(labels) > 1 else {labels[0]: counters}
    lines = []
    for label, c in parts.items():
        d = c["dev"]
        peers = "; ".join(f"peer {n}{' (' + p['datapath'] + ')' if p.get('datapath') else ''} "
                          f"rx {p['rx_packets']}/{p['rx_bytes']}B tx {p['tx_packets']}/{p['tx_bytes']}B"
                          for n, p in c["peers"].items())
        drops = ", ".join(f"{k}={v}" for k, v in c["drops"].items()) or "none"
        lines.append(f"tunlab relay {label}: dev rx {d['rx_packets']}/{d['rx_bytes']}B "
                     f"tx {d['tx_packets']}/{d['tx_bytes']}B; {peers}; drops: {drops}")
    return "\n".join(lines)


def _setup_logging(level: str, path: str | None) -> None:
    handler: logging.Handler
    if path:
        handler = logging.FileHandler(path)
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s tunlab-relay[%(process)d] %(levelname)s %(message)s"))
    logger = logging.getLogger("tunlab.relay")
    logger.addHandler(handler)
    logger.setLevel(getattr(logging, level.upper()))
    logger.propagate = False


@click.command("relay-stats", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("path")
@click.option("--compact", is_flag=True, help="one JSON line")
@click.option("--timeout", default=3.0, show_default=True, type=float, help="seconds to wait for the answer")
def stats_cmd(path: str, compact: bool, timeout: float) -> None:
    """Print the counters of the relay serving control socket PATH (its --control) as JSON."""
    from .control import query_stats

    reply = query_stats(path, timeout=timeout)
    click.echo(json.dumps(reply, separators=(",", ":")) if compact else json.dumps(reply, indent=2))


def main(argv: list[str] | None = None) -> None:
    """``tunlab relay ARGS`` without the ``tunlab`` group (the lab's relay fork server runs this)."""
    from tunlab.errors import run_command

    run_command(relay_cmd, argv, "tunlab relay")
