"""`tunlab show / up / down / ls / exec / clean`: thin commands over tunlab.lab.lab and tunlab.lab.ledger."""

from __future__ import annotations

import os
import shutil
import time
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from tunlab.cli.console import make_console
from tunlab.errors import TunlabError
from tunlab.lab.ledger import Ledger, list_runs
from tunlab.model.topology import Endpoint, Topology, Vnf
from tunlab.system.privileges import require_root

_param_opt = click.option("-p", "--param", "params", multiple=True, metavar="NAME=VALUE",
                          help="argument of the topology function (repeatable), e.g. -p n_vnfs=10")


def _console() -> Console:
    return make_console(soft_wrap=False)


def _load(ref: str, params: tuple[str, ...]) -> Topology:
    from tunlab.model.topofile import load_topology, parse_params

    return load_topology(ref, parse_params(params))


# ---------------------------------------------------------------------------------------------- show


def _vnf_does(n: Endpoint | Vnf) -> str:
    if isinstance(n, Endpoint):
        return "endpoint"
    if n.kind == "hook":
        return f"hook {n.hook if isinstance(n.hook, str) else getattr(n.hook, '__name__', n.hook)}"
    parts = ["kernel"]
    if n.nft:
        parts.append("nftables")
    parts += [f"route {r.dst} {r.type}" for r in n.routes]
    return ", ".join(parts)


@click.command("show")
@click.argument("topology")
@_param_opt
@click.option("--routes", is_flag=True, help="also print every relay's routes (prefix -> next hop)")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object (schema tunlab.show/1), routes included")
@click.option("--hosts", "hosts_file", metavar="FILE", type=click.Path(dir_okay=False),
              help="an inventory: print where each node goes and the links between hosts (docs/multihost.md)")
def show_cmd(topology: str, params: tuple[str, ...], routes: bool, as_json: bool, hosts_file: str | None) -> None:
    """Print TOPOLOGY's nodes, links, addresses and hops (no root needed).

    TOPOLOGY: a topology file, or the name of one shipped with tunlab (linear, three_vnf, fork)."""
    t = _load(topology, params)
    if hosts_file:
        _show_hosts(t, hosts_file)
        return
    if as_json:
        from tunlab.cli.jsonout import dumps, topology_json

        click.echo(dumps(topology_json(t)))
        return
    con = _console()
    con.print(f"[bold]{t.name}[/bold]  ({t.source or 'python'})" + (f": {t.description}" if t.description else ""))
    con.print(f"overlay {t.overlay_net}, TUN MTU {t.mtu}")
    nodes = Table(title="nodes", title_justify="left")
    for col in ("node", "role", "overlay", "does"):
        nodes.add_column(col)
    for n in t.nodes:
        nodes.add_row(n.name, "endpoint" if isinstance(n, Endpoint) else "vnf", n.overlay, _vnf_does(n))
    con.print(nodes)
    links = Table(title="links (underlay veth + relay hop)", title_justify="left")
    for col in ("link", "a end", "b end", "transport"):
        links.add_column(col)
    for i, lk in enumerate(t.links):  # interface names as the plan makes them, RUN being the lab's run id
        links.add_row(lk.name, f"{lk.a} ve-RUN-{i}a {lk.a_addr} :{lk.a_port}",
                      f"{lk.b} ve-RUN-{i}b {lk.b_addr} :{lk.b_port}",
                      lk.transport + (" (b listens)" if lk.transport == "tcp" else f", datapath {t.datapath}"))
    con.print(links)
    impaired = [(lk.name, d, spec) for lk in t.links for d, spec in lk.impairs().items()]
    if impaired:  # issue 17: what the relays do to each direction
        imp = Table(title=f"impairments (by the relays; seed {t.seed if t.seed is not None else 'per run'})",
                    title_justify="left")
        for col in ("link", "direction", "impairments"):
            imp.add_column(col)
        for row in impaired:
            imp.add_row(*row)
        con.print(imp)
    con.print("every node's TUN is tun-RUN; RUN is the run id `tunlab up` prints", style="dim")
    paths = Table(title="paths", title_justify="left")
    paths.add_column("#")
    paths.add_column("hops")
    paths.add_column("extra destination prefixes")
    for i, p in enumerate(t.paths):
        paths.add_row(str(i), " -> ".join(p.nodes), ", ".join(p.prefixes))
    con.print(paths)
    if t.service_paths:  # NSH mode (issue 18, docs/nsh.md)
        from tunlab.model.nsh import sf_nodes

        sps = Table(title="NSH service paths (VXLAN-GPE + NSH on every link)", title_justify="left")
        for col in ("SPI", "hops (SFs marked *)", "SI", "classifier", "metadata", "reverse SPI"):
            sps.add_column(col)
        for sp in t.service_paths:
            sfs = set(sf_nodes(sp))
            match = ", ".join(f"{k} {v}" for k, v in (("src", sp.src), ("dst", sp.dst), ("proto", sp.proto),
                                                     ("sport", sp.sport), ("dport", sp.dport), ("dscp", sp.dscp))
                              if v is not None) or "all between the ends"
            md = sp.metadata()
            sps.add_row(str(sp.spi), " -> ".join(n + ("*" if n in sfs else "") for n in sp.nodes),
                        f"{sp.si} -> {sp.si - len(sfs)}", match,
                        md.get("context") or ", ".join(sp.tlvs) or "-", str(sp.rev_spi or "-"))
        con.print(sps)
    if routes:
        from tunlab.model.plan import collapse_routes

        rt = Table(title="relay routes", title_justify="left")
        rt.add_column("node")
        rt.add_column("prefix -> next hop")
        for n in t.nodes:
            rt.add_row(n.name, ", ".join(f"{p} -> {peer}" for p, peer in collapse_routes(t.routes_for(n.name))))
        con.print(rt)


def _show_hosts(t: Topology, hosts_file: str) -> None:
    """`tunlab show --hosts FILE`: the placement, and each link between hosts as the relay hop it becomes."""
    from tunlab.model.hosts import cross_links, lab_topology, load_inventory, place

    inv = load_inventory(hosts_file)
    placement = place(t, inv.names, hosts_file)
    lt = lab_topology(t, placement)
    con = _console()
    con.print(f"[bold]{t.name}[/bold] over {len(inv.hosts)} host(s) of {hosts_file}: TUN MTU {lt.mtu}"
              + (" (links between hosts keyed)" if lt.keyed else ""))
    tab = Table(title="placement", title_justify="left")
    for col in ("host", "underlay", "nodes (chain order)", "pinned"):
        tab.add_column(col)
    from tunlab.model.hosts import chain_order

    order = chain_order(t)
    for h in inv.hosts:
        mine = [n for n in order if placement[n] == h.name]
        pinned = [n.name for n in t.nodes if n.host == h.name]
        tab.add_row(h.name, h.underlay, " ".join(mine) or "-", " ".join(pinned) or "-")
    con.print(tab)
    crossing = cross_links(t, placement)
    links = Table(title=f"links between hosts ({len(crossing)}): relay hops over the underlay", title_justify="left")
    for col in ("link", "a end", "b end", "transport"):
        links.add_column(col)
    under = {h.name: h.underlay for h in inv.hosts}
    for i in crossing:
        lk = t.links[i]
        a, b = placement[lk.a], placement[lk.b]
        links.add_row(lk.name, f"{lk.a}@{a} {under[a]}", f"{lk.b}@{b} {under[b]}",
                      lk.transport + (", keyed" if lt.keyed else ""))
    con.print(links)


# ---------------------------------------------------------------------------------------------- up / down


BIG_LAB = 16  # nodes: above this, `up` prints a summary line instead of a row per node


def _sudo() -> str:
    """"sudo " when the user came through sudo (so the hints we print are what they would type)."""
    return "sudo " if os.environ.get("SUDO_UID") else ""


def _check_name(name: str) -> None:
    import re

    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_.-]{0,31}", name):
        raise TunlabError(f"--name {name!r}: use 1-32 letters, digits, '_', '.' or '-', starting with a letter")
    for r in list_runs():
        if r.meta().get("name") == name and r.state() != "dead":
            raise TunlabError(f"--name {name}: run {r.run_id} already has that name",
                              f"pick another name, or take it down: {_sudo()}tunlab down {name}")


@click.command("up")
@click.argument("topology")
@_param_opt
@click.option("--backend", default="netns", show_default=True, type=click.Choice(["netns", "mininet"]))
@click.option("--results", "results", default=None, metavar="DIR",
              help="copy relay logs and counters here when the lab goes down")
@click.option("--name", default=None, metavar="NAME",
              help="a name for this lab, unique on the machine: `tunlab exec --run NAME`, `tunlab down NAME`")
@click.option("--table/--no-table", "table", default=None,
              help=f"a row per node (default: only for labs of up to {BIG_LAB} nodes)")
@click.option("--restart/--no-restart", default=True, show_default=True,
              help="start a relay that dies again with its recorded command line")
@click.option("--seed", type=int, default=None, metavar="N",
              help="run seed of the links' impairments (default: the topology's, else one per run, printed)")
@click.option("--hosts", "hosts_file", metavar="FILE", type=click.Path(dir_okay=False), default=None,
              help="an inventory: place the lab across its hosts over ssh (docs/multihost.md)")
def up_cmd(topology: str, params: tuple[str, ...], backend: str, results: str | None, name: str | None,
           table: bool | None, restart: bool, seed: int | None, hosts_file: str | None) -> None:
    """Bring TOPOLOGY up and leave it running (take it down with `tunlab down`).

    Progress goes to stderr while the lab comes up; then one line with the run id and its folder."""
    require_root("tunlab up")
    from tunlab.lab.lab import Lab

    if name is not None:
        _check_name(name)
    t = _load(topology, params)
    if hosts_file:
        _up_on_hosts(t, hosts_file, name, restart, seed)
        return
    t0 = time.perf_counter()
    lab = Lab(t, backend=backend, results_dir=os.path.abspath(results) if results else None,
              restart_relays=restart, seed=seed)
    from tunlab.cli.progress import BringUpProgress

    with BringUpProgress(lab, len(t.nodes)):
        lab.__enter__()
    if name is not None:
        lab.ledger.update_meta(name=name)
    lab.detach()
    con = _console()
    label = f"{lab.run_id} ({name})" if name else lab.run_id
    con.print(f"lab [bold]{label}[/bold] ({t.name}, {len(t.nodes)} nodes) is up in "
              f"{time.perf_counter() - t0:.2f} s; files in {lab.run_dir}")
    if table if table is not None else len(lab.nodes) <= BIG_LAB:
        rows = Table()
        for col in ("node", "namespace", "overlay", "underlay interfaces"):
            rows.add_column(col)
        for node_name, node in lab.nodes.items():
            ifaces = " ".join(f"{i.ifname} {i.addr}" for i in node.plan.ifaces)
            rows.add_row(node_name, os.path.basename(node.netns_file), f"{node.overlay_dev} {node.overlay_ip}",
                         ifaces)
        con.print(rows)
    else:
        names = list(lab.nodes)
        con.print(f"nodes: {', '.join(names[:4])} ... {names[-1]} (every node: tunlab show {topology}, or --table)")
    impaired = [f"{lk.name} ({', '.join(d for d, _ in lk.impair)})" for lk in lab.plan.links if lk.impair]
    if impaired:
        con.print(f"impaired links: {', '.join(impaired)}; seed {lab.seed} (replay: --seed {lab.seed})")
    first = next(iter(lab.nodes))
    ref = name or lab.run_id
    con.print(f"try: {_sudo()}tunlab exec --run {ref} {first} -- ip addr    |    done: {_sudo()}tunlab down {ref}")


def _up_on_hosts(t: Topology, hosts_file: str, name: str | None, restart: bool, seed: int | None) -> None:
    from tunlab.lab.multihost import MultiHostLab
    from tunlab.model.hosts import load_inventory

    t0 = time.perf_counter()
    lab = MultiHostLab(t, load_inventory(hosts_file), restart_relays=restart, seed=seed)
    lab.__enter__()
    lab.detach()
    if name is not None:
        Ledger.open(lab.run_id).update_meta(name=name)
    label = f"{lab.run_id} ({name})" if name else lab.run_id
    per_host = ", ".join(f"{h}: {' '.join(n for n in lab.placement if lab.placement[n] == h)}"
                         for h in dict.fromkeys(lab.placement.values()))
    _console().print(f"lab [bold]{label}[/bold] ({t.name}, {len(t.nodes)} nodes) is up on "
                     f"{len(set(lab.placement.values()))} host(s) in {time.perf_counter() - t0:.2f} s "
                     f"({lab.trips.total} ssh round trips); {per_host}")
    _console().print(f"done: {_sudo()}tunlab down {name or lab.run_id}")


def _mine(led: Ledger) -> bool:
    """Is this run the caller's (started by the same user; root acting directly counts as uid 0)?"""
    from tunlab.system.privileges import caller_uid

    return led.meta().get("uid") == caller_uid()


def _open_run(ref: str) -> Ledger:
    """A run by id or by the name given with `tunlab up --name`."""
    from tunlab.lab.ledger import open_run

    return open_run(ref)


def _pick_run(run_id: str | None, states: tuple[str, ...], what: str) -> Ledger:
    """RUN_ID (an id or a name) or, when none is given, the caller's only run in ``states``: other users'
    runs are never picked implicitly."""
    if run_id:
        return _open_run(run_id)
    candidates = [r for r in list_runs() if r.state() in states]
    runs = [r for r in candidates if _mine(r)]
    others = len(candidates) - len(runs)
    note = f"; {others} lab(s) of other users left alone" if others else ""
    if len(runs) == 1:
        return runs[0]
    if not runs:
        raise TunlabError(f"you have no lab that is {' or '.join(states)}{note}",
                          f"see `tunlab ls`; name one explicitly: tunlab {what} "
                          + ("--run ID NODE" if what == "exec" else "ID"))
    raise TunlabError(f"you have {len(runs)} labs that are {' or '.join(states)} "
                      f"({', '.join(r.meta().get('name') or r.run_id for r in runs)})",
                      f"say which: tunlab {what} --run ID" if what == "exec" else f"say which: tunlab {what} ID")


@click.command("down")
@click.argument("run_id", required=False)
@click.option("--force", is_flag=True, help="also take down a lab whose owning process still runs")
def down_cmd(run_id: str | None, force: bool) -> None:
    """Take down a lab brought up by `tunlab up`: RUN_ID (a run id or a --name), or your only one."""
    require_root("tunlab down")
    led = _pick_run(run_id, ("up",), "down")
    state = led.state()
    if state == "running" and not force:
        owner = (led.meta().get("owner") or {}).get("pid")
        raise TunlabError(f"run {led.run_id} belongs to process {owner}, which still runs",
                          "it takes its lab down itself; use --force to take it down anyway")
    _teardown_and_report(led)


def _teardown_and_report(led: Ledger) -> None:
    from tunlab.lab.lab import teardown_run

    t0 = time.perf_counter()
    n = len(led.entries())
    errors = teardown_run(led)
    for e in errors:
        click.echo(f"tunlab: {e}", err=True)
    if errors:
        raise TunlabError(f"run {led.run_id}: {len(errors)} problem(s) while removing it",
                          f"its ledger stays in {led.dir}; retry with: sudo tunlab clean {led.run_id}")
    click.echo(f"run {led.run_id}: removed {n} recorded object(s) in {time.perf_counter() - t0:.2f} s")


# ---------------------------------------------------------------------------------------------- ls


def _age(created: Any) -> str:
    if not isinstance(created, (int, float)):
        return "?"
    s = int(time.time() - created)
    return f"{s}s" if s < 120 else f"{s // 60}m" if s < 7200 else f"{s // 3600}h"


def _state(r: Ledger) -> str:
    """The run's state; a running lab with a dead relay is "degraded", naming the nodes."""
    from tunlab.lab.relays import dead_relays

    state = r.state()
    if state in ("up", "running"):
        dead = dead_relays(r)
        if dead:
            return f"degraded ({state}): relay of {', '.join(f'{n} {how}' for n, how in sorted(dead.items()))}"
    return state


@click.command("ls")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object (schema tunlab.ls/1)")
@click.option("--mine", is_flag=True, help="only your runs")
def ls_cmd(as_json: bool, mine: bool) -> None:
    """List tunlab runs on this machine (running, up, or dead and waiting for `tunlab clean`), with the user
    each belongs to."""
    runs = [r for r in list_runs() if not mine or _mine(r)]
    rows = []
    for r in runs:
        m = r.meta()
        uid = m.get("uid")
        user = m.get("user") or (None if uid is None else str(uid))
        rows.append((r, _state(r), user))
    if as_json:
        from tunlab.cli.jsonout import dumps, run_json

        click.echo(dumps({"schema": "tunlab.ls/1", "runs": [run_json(r, state, user) for r, state, user in rows]}))
        return
    con = _console()
    if not runs:
        con.print("no tunlab runs")
        return
    table = Table()
    for col in ("run", "name", "state", "user", "backend", "topology", "nodes", "age", "pid"):
        table.add_column(col)
    for r, state, user in rows:
        m = r.meta()
        owner = (m.get("owner") or {}).get("pid")
        table.add_row(r.run_id, str(m.get("name") or "-"), state, user or "?", str(m.get("backend", "?")),
                      str(m.get("topology", "?")), str(len(m.get("nodes") or {})), _age(m.get("created")),
                      str(owner or "-"))
    con.print(table)


# ---------------------------------------------------------------------------------------------- exec


@click.command("exec", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.option("--run", "run_id", default=None, metavar="ID",
              help="which lab (a run id or a --name); default: your only running lab")
@click.argument("node")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
def exec_cmd(run_id: str | None, node: str, command: tuple[str, ...]) -> None:
    """Run COMMAND (default: a shell) inside NODE of the running lab: tunlab exec NODE -- CMD ARGS."""
    require_root("tunlab exec")
    led = _pick_run(run_id, ("up", "running"), "exec")
    nodes = led.meta().get("nodes") or {}
    info = nodes.get(node)
    if not isinstance(info, dict):
        raise TunlabError(f"run {led.run_id} has no node '{node}'", f"nodes: {', '.join(nodes) or 'none'}")
    nsfile = str(info.get("netns_file") or f"/run/netns/{info.get('netns')}")
    if not os.path.exists(nsfile):
        raise TunlabError(f"node '{node}' of run {led.run_id} has no namespace any more ({nsfile})")
    argv = list(command[1:] if command[:1] == ("--",) else command) or _node_shell(led, node)
    nsenter = shutil.which("nsenter") or "nsenter"
    os.environ["TUNLAB_NODE"] = node
    os.environ["TUNLAB_RUN_ID"] = led.run_id
    # the command belongs to the lab: tagged with its run and recorded (nsenter and then the command
    # keep this pid and start time), so `tunlab down` stops it before removing the namespaces
    from tunlab.lab.ledger import ENV_TAG
    from tunlab.system.procs import proc_start_time

    led.append({"op": "proc", "node": node, "role": "exec", "pid": os.getpid(),
                "start": proc_start_time(os.getpid()), "argv0": argv[0]})
    os.execve(nsenter, [nsenter, f"--net={nsfile}", "--", *argv], {**os.environ, ENV_TAG: led.run_id})


def _node_shell(led: Ledger, node: str) -> list[str]:
    """An interactive shell whose prompt names the node and the run (bash: after the user's own rc files)."""
    shell = os.environ.get("SHELL") or "/bin/sh"
    prefix = f"[{node}@tunlab-{led.run_id}] "
    if os.path.basename(shell) == "bash":
        rc = led.dir / f"shellrc-{node}"
        rc.write_text("[ -f /etc/bash.bashrc ] && . /etc/bash.bashrc\n[ -f ~/.bashrc ] && . ~/.bashrc\n"
                      f"PS1='{prefix}'\"$PS1\"\n")
        return [shell, "--rcfile", str(rc), "-i"]
    os.environ["PS1"] = prefix + "$ "
    return [shell, "-i"]


# ---------------------------------------------------------------------------------------------- clean


@click.command("clean")
@click.argument("run_ids", nargs=-1)
@click.option("--dry-run", "-n", is_flag=True, help="only say what would be removed (every recorded object)")
@click.option("--all-users", "all_users", is_flag=True, help="also other users' dead runs (default: only yours)")
def clean_cmd(run_ids: tuple[str, ...], dry_run: bool, all_users: bool) -> None:
    """Remove what dead tunlab runs recorded (your dead runs, or RUN_IDS) and nothing else.

    A run is dead when the process that owned it is gone. Labs kept by `tunlab up` are not dead: take
    them down with `tunlab down`."""
    require_root("tunlab clean")
    runs = [_open_run(r) for r in run_ids] if run_ids else list_runs()
    problems = 0
    cleaned = 0
    others = 0
    for led in runs:
        state = led.state()
        if state != "dead":
            if run_ids:
                hint = "tunlab down" if state == "up" else "its owner takes it down"
                click.echo(f"run {led.run_id} is {state}: left alone ({hint})")
            continue
        if not run_ids and not all_users and not _mine(led):
            others += 1
            continue
        if dry_run:
            entries = led.entries()
            click.echo(f"run {led.run_id} ({led.meta().get('user') or '?'}): would remove {len(entries)} "
                       f"recorded object(s) and {led.dir}")
            for line in _describe_entries(entries):
                click.echo(f"  {line}")
            cleaned += 1
            continue
        try:
            _teardown_and_report(led)
            cleaned += 1
        except TunlabError as exc:
            click.echo(f"tunlab: {exc}", err=True)
            problems += 1
    if not cleaned and not problems:
        click.echo("nothing to clean")
    if others:
        click.echo(f"{others} dead run(s) of other users left alone (tunlab clean ID, or --all-users)")
    if problems:
        raise TunlabError(f"{problems} run(s) could not be cleaned completely")


def _describe_entries(entries: list[dict[str, Any]]) -> list[str]:
    """What a ledger recorded, newest first (the order it is undone in), one line per kind."""
    groups: dict[str, list[str]] = {}
    for e in reversed(entries):
        op = str(e.get("op"))
        label = str(e.get("name") or e.get("ifname") or e.get("pid") or e.get("path") or "")
        if op == "proc" and e.get("role"):
            label = f"{e.get('pid')} ({e['role']}{' ' + str(e['node']) if e.get('node') else ''})"
        groups.setdefault(op, []).append(label)
    out = []
    for op, labels in groups.items():
        shown = ", ".join(labels[:8]) + (f" and {len(labels) - 8} more" if len(labels) > 8 else "")
        out.append(f"{op} ({len(labels)}): {shown}")
    return out
