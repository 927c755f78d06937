"""``tunlab run SCENARIO...``: run scenario files and report.

Exit codes (tunlab.errors.ExitCode): 0 every check passed, 1 a check failed (or a scenario's lab did not
come up), 2 a bad argument or scenario file, 3 this machine cannot run labs (not root, no namespaces), 4 a bug.
"""

from __future__ import annotations

import os
import random
import shlex
from pathlib import Path

import click

from tunlab.cli.console import make_console
from tunlab.errors import ExitCode
from tunlab.system.privileges import require_linux_netns, require_root


def find_scenario(ref: str) -> str:
    """A SCENARIO argument: a file, or the name of a scenario shipped with tunlab (``three_vnf``)."""
    if os.path.exists(ref) or ref.endswith(".py") or os.sep in ref:
        return ref
    from tunlab.model.topofile import SCENARIOS_DIR

    shipped = SCENARIOS_DIR / f"{ref}.py"
    if shipped.is_file():
        return str(shipped)
    from tunlab.errors import DescriptionError

    raise DescriptionError(f"no scenario file or shipped scenario named '{ref}'", source=None,
                           hint=f"shipped: {', '.join(shipped_scenarios()) or 'none'}; or give a path to a .py file")


def shipped_scenarios() -> list[str]:
    from tunlab.model.topofile import SCENARIOS_DIR

    return sorted(p.stem for p in SCENARIOS_DIR.glob("*.py") if not p.name.startswith("_"))


@click.command("run")
@click.argument("scenarios", nargs=-1, required=True)
@click.option("--keep", is_flag=True,
              help="keep the results folder even on success and leave the lab up (then `tunlab down RUN`)")
@click.option("--results", "results_root", default="tunlab-results", show_default=True, metavar="DIR",
              help="where each run's folder (pcaps, relay logs, report, JUnit XML) goes")
@click.option("--junit", type=click.Path(dir_okay=False), default=None, metavar="FILE",
              help="also write one JUnit XML file for all the scenarios")
@click.option("--backend", type=click.Choice(["netns", "mininet"]), default="netns", show_default=True)
@click.option("--hosts", "hosts_file", metavar="FILE", type=click.Path(dir_okay=False), default=None,
              help="an inventory: each scenario's lab is placed across its hosts (docs/multihost.md)")
@click.option("--seed", type=int, default=None,
              help="ids, ports and sequence numbers of the probes, and the run seed of the links' impairments "
                   "(default: random, and printed so that --seed N replays the same packets and decisions)")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object (schema tunlab.run/1) instead of the "
              "report")
@click.option("-q", "--quiet", is_flag=True, help="one line per scenario, even for one scenario")
@click.option("-v", "--verbose", is_flag=True, help="a per-hop table for every probe (default: the first probe "
              "and every failing one)")
def run_cmd(scenarios: tuple[str, ...], keep: bool, results_root: str, junit: str | None, backend: str,
            hosts_file: str | None, seed: int | None, as_json: bool, quiet: bool, verbose: bool) -> int:
    """Build each scenario's lab, send its packets, check every hop, report.

    SCENARIO: a scenario file, or the name of one shipped with tunlab (three_vnf, firewall, tcp_chain,
    tunconnector_pair).

    One scenario: per-hop tables (the first probe's and every failing one's; all with -v), every check and
    a verdict. Several: one line each, the failed checks, a summary (progress on stderr). The last line
    gives the seed.
    Results (kept on failure, or with --keep) go to DIR/<run id>/.

    Exit codes: 0 every check passed; 1 a check failed or a lab did not come up; 2 a bad argument or
    scenario file; 3 this machine or user cannot run labs (not root, no namespaces); 4 a bug in tunlab.
    """
    require_root("tunlab run")
    require_linux_netns()
    from tunlab.model.scenario import require_scenarios
    from tunlab.verdict.report import junit_xml, render, summary_line, verdict_line
    from tunlab.run.runner import run_scenario

    files = [find_scenario(s) for s in scenarios]
    loaded = require_scenarios(files)  # every file checked before any lab comes up
    inventory = None
    if hosts_file:
        from tunlab.model.hosts import load_inventory

        inventory = load_inventory(hosts_file)
    if seed is None:
        seed = random.randrange(2**31)
    console = make_console(stderr=True) if as_json else make_console()
    progress = make_console(stderr=True)
    detailed = (len(loaded) == 1 or verbose) and not quiet and not as_json
    results = []
    for sc in loaded:
        if (as_json or len(loaded) > 1) and not quiet:  # progress, so a long run is never silent
            progress.print(f"running {sc.name} ({sc.source}) ...", style="dim")
        result = run_scenario(sc, results_root=results_root, keep=keep, backend=backend, seed=seed,
                              hosts=inventory)
        results.append(result)
        if as_json:
            continue
        if detailed:
            render(result, console, tables="all" if verbose else "some")
        elif result.passed or quiet:
            console.print(verdict_line(result))
        else:
            render(result, console, tables="none")  # the failed checks, ending with the verdict line
    if junit:
        from tunlab.system.privileges import write_user_file

        write_user_file(Path(junit), junit_xml(results))
    code = ExitCode.OK if all(r.passed for r in results) else ExitCode.CHECKS_FAILED
    if as_json:
        from tunlab.cli.jsonout import dumps, results_json

        click.echo(dumps(results_json(results, seed, int(code))))
        return int(code)
    if len(results) > 1:
        console.print(summary_line(results))
    console.print(f"seed {seed}: replay the same packets with "
                  f"tunlab run --seed {seed} {shlex.join(scenarios)}", style="dim")
    return int(code)
