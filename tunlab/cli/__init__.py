"""The ``tunlab`` command. Subcommands live in their own modules and are imported on use."""

from __future__ import annotations

import importlib
import signal

import click

from tunlab.errors import run_command

# name -> "module:attribute" of a click.Command; imported only when that command runs
_COMMANDS: dict[str, tuple[str, str]] = {
    "relay": ("tunlab.relay.command:relay_cmd", "TUN/TAP <-> UDP/TCP relay (TunConnector compatible)"),
    "relay-stats": ("tunlab.cli.stats:stats_cmd", "print a running relay's counters (PATH, or RUN NODE)"),
    "show": ("tunlab.cli.lab:show_cmd", "print a topology's nodes, links, addresses and hops"),
    "up": ("tunlab.cli.lab:up_cmd", "bring a lab up and leave it running"),
    "down": ("tunlab.cli.lab:down_cmd", "take a running lab down"),
    "ls": ("tunlab.cli.lab:ls_cmd", "list runs"),
    "exec": ("tunlab.cli.lab:exec_cmd", "run a command inside a node of a running lab"),
    "clean": ("tunlab.cli.lab:clean_cmd", "remove what dead tunlab runs left behind (by ownership)"),
    "cli": ("tunlab.cli.shell:cli_cmd", "an interactive shell into a running lab (nodes, pingall, link down...)"),
    "capture": ("tunlab.cli.capture:capture_cmd", "a live pcap of a running lab's link or TUN (to Wireshark)"),
    "graph": ("tunlab.cli.graph:graph_cmd", "draw a topology or a running lab (Graphviz dot or Mermaid)"),
    "schema": ("tunlab.cli.graph:schema_cmd", "print the JSON Schema of topology files"),
    "run": ("tunlab.cli.run:run_cmd", "run scenarios: build the lab, send packets, check every hop"),
    "pcap": ("tunlab.cli.pcap:pcap_cmd", "link captures: inner packets as a plain pcap; the Wireshark dissector"),
    "impair": ("tunlab.cli.impair:impair_cmd", "impair a running lab's link now (delay, loss, ...; --clear)"),
    "link": ("tunlab.cli.impair:link_cmd", "take a running lab's link down or up in its relays"),
    "hosts": ("tunlab.cli.hosts:hosts_cmd", "the hosts of an inventory: `tunlab hosts check --hosts FILE`"),
    "link-mininet": ("tunlab.cli.mininet:link_mininet_cmd", "make Debian's mininet importable from this venv"),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(_COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        spec = _COMMANDS.get(name)
        if spec is None:
            return None
        mod_name, attr = spec[0].split(":")
        try:
            mod = importlib.import_module(mod_name)
        except ImportError as exc:  # a part not built yet, or a missing extra
            raise click.ClickException(f"the '{name}' command is unavailable: {exc}") from exc
        cmd = getattr(mod, attr)
        return cmd

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, _COMMANDS[name][1]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


EPILOG = ("Exit codes: 0 done (run: every check passed), 1 a check failed, 2 a usage or description error, "
          "3 cannot run here (not root, no namespaces, a missing tool), 4 internal error (a bug).")


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]}, epilog=EPILOG)
@click.version_option(package_name="tunlab")
def cli() -> None:
    """tunlab: network-namespace labs for VNF chains, and the TUN relay that links them."""


def _terminate(signum: int, frame: object) -> None:
    """SIGTERM unwinds like Ctrl-C, so a lab being built or checked is torn down by its context manager."""
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> None:
    from tunlab.cli.console import ascii_safe_streams

    ascii_safe_streams()  # PYTHONIOENCODING=ascii, LANG=C: ASCII look-alikes, never a UnicodeEncodeError
    signal.signal(signal.SIGTERM, _terminate)  # the relay installs its own handlers when it runs
    run_command(cli, argv, "tunlab")
