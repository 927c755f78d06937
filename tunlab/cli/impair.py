"""`tunlab impair RUN LINK [DIR] delay=20ms loss=1%` / `--clear`, and `tunlab link RUN LINK down|up`: a
running lab's link impairments changed through its relays' control sockets (issue 17, lab/impairs.py)."""

from __future__ import annotations

import json

import click

from tunlab.errors import TunlabError


def _attached(run: str):  # type: ignore[no-untyped-def]
    from tunlab.lab.attach import AttachedLab
    from tunlab.lab.ledger import open_run

    return AttachedLab(open_run(run))


def _print(replies: list[dict], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(replies, separators=(",", ":")))
        return
    for r in replies:
        click.echo(f"{r['dir']}: {r.get('spec', 'none')}")


@click.command("impair", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("run")
@click.argument("link")
@click.argument("words", nargs=-1, metavar="[DIR] [SPEC...]")
@click.option("--clear", is_flag=True, help="remove the link's impairments first (alone: remove them all)")
@click.option("--json", "as_json", is_flag=True, help="the relays' replies as JSON")
def impair_cmd(run: str, link: str, words: tuple[str, ...], clear: bool, as_json: bool) -> None:
    """Impair LINK of RUN now: delay=20ms jitter=5ms loss=1% duplicate= reorder= corrupt= rate= slot= flap=,
    or down/up. DIR is X>Y (one direction) or both (default)."""
    direction = None
    if words and "=" not in words[0] and words[0] not in ("down", "up"):
        direction, words = words[0], words[1:]
    spec = " ".join(words) or None
    if spec is None and not clear:
        raise TunlabError("say what to change", "e.g. tunlab impair RUN vnf1-vnf2 delay=20ms loss=1%, or --clear")
    _print(_attached(run).impair(link, direction, spec, clear=clear), as_json)


@click.command("link", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("run")
@click.argument("link")
@click.argument("state", type=click.Choice(["down", "up"]))
@click.argument("direction", required=False, metavar="[DIR]")
@click.option("--json", "as_json", is_flag=True, help="the relays' replies as JSON")
def link_cmd(run: str, link: str, state: str, direction: str | None, as_json: bool) -> None:
    """Take LINK of RUN down or up in its relays (packets dropped as impair_link_down; the veths stay up)."""
    _print(_attached(run).impair(link, direction, None, state=state), as_json)
