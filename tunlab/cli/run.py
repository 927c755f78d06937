"""``tunlab run SCENARIO...``: run scenario files and report (exit code 0 only when every check passed)."""

from __future__ import annotations

from pathlib import Path

import click

from tunlab.cli.console import make_console
from tunlab.system.privileges import require_linux_netns, require_root


@click.command("run")
@click.argument("scenarios", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--keep", is_flag=True,
              help="keep the results folder even on success and leave the lab up (then `tunlab down RUN`)")
@click.option("--results", "results_root", default="tunlab-results", show_default=True, metavar="DIR",
              help="where each run's folder (pcaps, relay logs, report, JUnit XML) goes")
@click.option("--junit", type=click.Path(dir_okay=False), default=None, metavar="FILE",
              help="also write one JUnit XML file for all the scenarios")
@click.option("--backend", type=click.Choice(["netns", "mininet"]), default="netns", show_default=True)
@click.option("--seed", type=int, default=None, help="ids, ports and sequence numbers of the probes (random)")
@click.option("-q", "--quiet", is_flag=True, help="one line per scenario, even for one scenario")
@click.option("-v", "--verbose", is_flag=True, help="a per-hop table for every probe (default: the first probe "
              "and every failing one)")
def run_cmd(scenarios: tuple[str, ...], keep: bool, results_root: str, junit: str | None, backend: str,
            seed: int | None, quiet: bool, verbose: bool) -> int:
    """Build each scenario's lab, send its packets, check every hop, report.

    One scenario: per-hop tables (the first probe's and every failing one's; all with -v), every check and
    a verdict. Several: one line each, the failed checks, a summary.
    Results (kept on failure, or with --keep) go to DIR/<run id>/.
    """
    require_root("tunlab run")
    require_linux_netns()
    from tunlab.model.scenario import require_scenarios
    from tunlab.verdict.report import junit_xml, render, summary_line, verdict_line
    from tunlab.run.runner import run_scenario

    loaded = require_scenarios(list(scenarios))  # every file checked before any lab comes up
    console = make_console()
    detailed = (len(loaded) == 1 or verbose) and not quiet
    results = []
    for sc in loaded:
        result = run_scenario(sc, results_root=results_root, keep=keep, backend=backend, seed=seed)
        results.append(result)
        if detailed:
            render(result, console, tables="all" if verbose else "some")
        elif result.passed or quiet:
            console.print(verdict_line(result))
        else:
            render(result, console, tables="none")  # the failed checks, ending with the verdict line
    if junit:
        from tunlab.system.privileges import chown_to_invoking_user

        Path(junit).write_bytes(junit_xml(results))
        chown_to_invoking_user(junit, recursive=False)
    if len(results) > 1:
        console.print(summary_line(results))
    return 0 if all(r.passed for r in results) else 1
