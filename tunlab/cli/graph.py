"""`tunlab graph` (a topology or a running lab as Graphviz dot or Mermaid) and `tunlab schema` (the JSON
Schema of topology files)."""

from __future__ import annotations

import json
import os
from typing import Any

import click

from tunlab.errors import TunlabError
from tunlab.model.names import is_run_id

_param_opt = click.option("-p", "--param", "params", multiple=True, metavar="NAME=VALUE",
                          help="argument of the topology (repeatable), e.g. -p transport=tcp")


def relay_states(meta: dict[str, Any]) -> dict[str, str]:
    """Node -> up / degraded / dead / unknown, from each node's relay control socket."""
    from tunlab.relay.control import query_stats

    out = {}
    for name, info in (meta.get("nodes") or {}).items():
        control = info.get("control")
        if not control or not os.path.exists(control):
            out[name] = "dead"
            continue
        try:
            c = query_stats(control, timeout=1.0)
        except (TunlabError, OSError):
            out[name] = "dead" if os.geteuid() == 0 else "unknown"
            continue
        peers = c.get("peers") or {}
        out[name] = "up" if all(p.get("connected") for p in peers.values()) else "degraded"
    return out


@click.command("graph")
@click.argument("what", metavar="TOPOLOGY|RUN")
@_param_opt
@click.option("--format", "fmt", type=click.Choice(["dot", "mermaid"]), default="dot", show_default=True,
              help="dot (Graphviz: tunlab graph fork | dot -Tsvg > fork.svg) or mermaid (markdown)")
def graph_cmd(what: str, params: tuple[str, ...], fmt: str) -> None:
    """Draw TOPOLOGY (a file or a name in topologies/) or the running lab RUN (with each relay's state)."""
    from tunlab.lab.ledger import Ledger, open_run, run_root
    from tunlab.model.graph import graph_data, to_dot, to_mermaid
    from tunlab.model.topofile import load_topology, parse_params

    state = None
    run: Ledger | None = None
    if is_run_id(what) and (run_root() / what).is_dir():  # a run id names a run only when the run exists
        run = open_run(what)
    else:
        try:
            g = graph_data(load_topology(what, parse_params(params)))
        except TunlabError as not_topology:  # then a lab's name (`tunlab up --name mine`), else the first error
            try:
                run = open_run(what)
            except TunlabError:
                raise not_topology from None
    if run is not None:
        meta = run.meta()
        g = meta.get("graph")
        if not g:
            raise TunlabError(f"run {what} was started by an older tunlab and recorded no graph",
                              f"draw its topology instead: tunlab graph {meta.get('source') or meta.get('topology')}")
        state = relay_states(meta)
    click.echo((to_dot if fmt == "dot" else to_mermaid)(g, state), nl=False)


@click.command("schema")
def schema_cmd() -> None:
    """Print the JSON Schema of topology files (YAML or JSON; generated from the model)."""
    from tunlab.model.yamlfile import json_schema

    click.echo(json.dumps(json_schema(), indent=2))
