"""`tunlab hosts check --hosts FILE`: are the inventory's hosts ready for a lab across them (issue 19)?"""

from __future__ import annotations

import click

from tunlab.errors import CannotRunHere

hosts_opt = click.option("--hosts", "hosts_file", metavar="FILE", type=click.Path(dir_okay=False),
                         help="an inventory of hosts (docs/multihost.md): the lab is placed across them")


@click.group("hosts")
def hosts_cmd() -> None:
    """The hosts of an inventory (labs across hosts, docs/multihost.md)."""


@hosts_cmd.command("check")
@click.option("--hosts", "hosts_file", metavar="FILE", required=True, type=click.Path(dir_okay=False),
              help="the inventory (Ansible-style INI: NAME ansible_host=... underlay=ADDR ...)")
def check_cmd(hosts_file: str) -> None:
    """One SSH round trip per host (all at once): reachable, root or sudo, tunlab installed and the same
    version as here, clock within a second, underlay address held and every other host's reached.
    Each problem is one line naming the host; exit 3 when there is any."""
    from tunlab.lab.remote import RoundTrips, check_hosts
    from tunlab.model.hosts import load_inventory

    inv = load_inventory(hosts_file)
    trips = RoundTrips()
    problems = check_hosts(inv, trips)
    for p in problems:
        click.echo(f"tunlab: {p}", err=True)
    if problems:
        raise CannotRunHere(f"{len(problems)} problem(s) on the hosts of {hosts_file}")
    click.echo(f"{len(inv.hosts)} host(s) ready: {', '.join(inv.names)} ({trips.total} ssh round trips)")


@hosts_cmd.command("agent", hidden=True)
def agent_cmd() -> None:
    """What a controller runs on each host over ssh: JSON requests on stdin, replies on stdout."""
    from tunlab.run.hostagent import main
    from tunlab.system.privileges import require_root

    require_root("the host agent of a lab across hosts")
    raise SystemExit(main())


@hosts_cmd.command("remove", hidden=True)
@click.argument("run_id")
def remove_cmd(run_id: str) -> None:
    """Remove this host's part of run RUN_ID whatever its state (the controller's `down` and `clean`)."""
    from tunlab.lab.lab import teardown_run
    from tunlab.lab.ledger import list_runs
    from tunlab.system.privileges import require_root

    require_root("tunlab hosts remove")
    runs = [r for r in list_runs() if r.run_id == run_id]
    if not runs:
        click.echo(f"run {run_id}: nothing here")
        return
    errors = teardown_run(runs[0])
    for e in errors:
        click.echo(f"tunlab: {e}", err=True)
    if errors:
        raise CannotRunHere(f"run {run_id}: {len(errors)} problem(s) while removing it")
    click.echo(f"run {run_id}: removed")
