"""`tunlab relay-stats PATH` (a relay's control socket) or `tunlab relay-stats RUN NODE` (a lab's relay),
once or ``--watch``-ing. The relay's own command (`tunlab.relay.command.stats_cmd`) knows control sockets only;
this one also resolves a run and node through the lab's ledger."""

from __future__ import annotations

import json
import time

import click

from tunlab.errors import TunlabError


@click.command("relay-stats", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("target", nargs=-1, required=True, metavar="PATH | RUN NODE")
@click.option("--compact", is_flag=True, help="one JSON line")
@click.option("--timeout", default=3.0, show_default=True, type=float, help="seconds to wait for the answer")
@click.option("--watch", "watch", type=float, default=None, is_flag=False, flag_value=1.0, metavar="[SECONDS]",
              help="print again every SECONDS (default 1) until Ctrl-C")
def stats_cmd(target: tuple[str, ...], compact: bool, timeout: float, watch: float | None) -> None:
    """Print a relay's counters as JSON: from its control socket PATH (its --control), or of NODE in RUN."""
    from tunlab.relay.control import query_stats

    if len(target) == 1:
        path = target[0]
    elif len(target) == 2:
        from tunlab.lab.attach import AttachedLab
        from tunlab.lab.ledger import open_run

        path = AttachedLab(open_run(target[0])).node(target[1]).control
    else:
        raise TunlabError("give a control socket PATH, or RUN NODE", "e.g. tunlab relay-stats 4f2a vnf2")
    while True:
        reply = query_stats(path, timeout=timeout)
        click.echo(json.dumps(reply, separators=(",", ":")) if compact else json.dumps(reply, indent=2))
        if watch is None:
            return
        try:
            time.sleep(watch)  # the interval the user asked for between two prints
        except KeyboardInterrupt:
            return
