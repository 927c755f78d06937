"""`tunlab cli RUN`: an interactive shell into a running lab, in the manner of Mininet's CLI.

    tunlab> nodes                 nodes, roles, overlay addresses, relay state
    tunlab> links / net           links with their interfaces and state / each node's neighbours
    tunlab> pingall               every node pings every other node's overlay address (one probe each)
    tunlab> sender ping -c1 172.16.0.2     NODE CMD...: run CMD in NODE's namespace
    tunlab> link vnf1 vnf2 down   take a link down (or up) at run time
    tunlab> stats [NODE]          relay counters

Lines come from a terminal (history, tab completion) or from standard input, so tests and CI can script it:
``printf 'pingall\\n' | sudo tunlab cli``. The exit status is 1 when a scripted command failed.
"""

from __future__ import annotations

import cmd
import json
import shlex
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any

import click

from tunlab.errors import TunlabError
from tunlab.lab.attach import AttachedLab
from tunlab.system.privileges import require_root


class LabShell(cmd.Cmd):
    intro = ""
    doc_header = "commands (NODE CMD... runs CMD in NODE; help COMMAND for more)"

    def __init__(self, lab: AttachedLab, stdin: IO[str] | None = None, stdout: IO[str] | None = None) -> None:
        super().__init__(stdin=stdin, stdout=stdout)
        self.lab = lab
        self.prompt = f"tunlab[{lab.run_id}]> "
        self.failed = False
        if stdin is not None and not stdin.isatty():
            self.use_rawinput = False
            self.prompt = ""

    # -- history (a terminal only): ~/.tunlab_history, as Mininet keeps ~/.mininet_history
    HISTORY = Path.home() / ".tunlab_history"

    def preloop(self) -> None:
        if self.use_rawinput:
            try:
                import readline

                readline.read_history_file(self.HISTORY)
            except (ImportError, OSError):
                pass

    def postloop(self) -> None:
        if self.use_rawinput:
            try:
                import readline

                readline.set_history_length(1000)
                readline.write_history_file(self.HISTORY)
            except (ImportError, OSError):
                pass

    # -- plumbing
    def say(self, text: str = "") -> None:
        self.stdout.write(text + "\n")
        self.stdout.flush()

    def fail(self, text: str) -> None:
        self.failed = True
        self.say(f"*** {text}")

    def onecmd(self, line: str) -> bool:
        try:
            return bool(super().onecmd(line))
        except TunlabError as exc:
            self.fail(str(exc))
            return False

    def emptyline(self) -> bool:
        return False

    def default(self, line: str) -> bool:
        if line.strip() == "EOF":
            return True
        words = shlex.split(line)
        if words and words[0] in self.lab.nodes:
            if len(words) == 1:
                self.fail(f"give a command to run in {words[0]}, e.g. {words[0]} ip -br addr")
                return False
            res = self.lab.run(words[0], ["sh", "-c", " ".join(shlex.quote(w) for w in words[1:])])
            self.stdout.write(res.stdout + res.stderr)
            if res.returncode != 0:
                self.fail(f"{words[0]}: exit status {res.returncode}")
            return False
        self.fail(f"unknown command or node: {words[0] if words else line!r} (try: help)")
        return False

    def completenames(self, text: str, *ignored: Any) -> list[str]:
        return super().completenames(text, *ignored) + [n for n in self.lab.nodes if n.startswith(text)]

    def completedefault(self, text: str, *ignored: Any) -> list[str]:
        return [n for n in self.lab.nodes if n.startswith(text)]

    # -- commands
    def do_nodes(self, arg: str) -> None:
        """nodes: every node, its role, overlay address and relay state."""
        for n in self.lab.nodes.values():
            self.say(f"{n.name:<12} {n.role:<9} {n.overlay_ip:<15} {n.overlay_dev:<10} relay "
                     f"{self.lab.relay_state(n.name)}")

    def do_links(self, arg: str) -> None:
        """links: every link, its interfaces, transport and state."""
        for lk in self.lab.links:
            state = "up" if self.lab.link_is_up(lk) else "DOWN"
            self.say(f"{lk.name:<20} {lk.a}:{lk.a_if} <-> {lk.b}:{lk.b_if}  {lk.transport}  {state}")

    def do_net(self, arg: str) -> None:
        """net: each node with its interfaces and the node at their other end."""
        for name in self.lab.nodes:
            ends = [f"{lk.a_if}:{lk.b}" if lk.a == name else f"{lk.b_if}:{lk.a}"
                    for lk in self.lab.links if name in (lk.a, lk.b)]
            self.say(f"{name} {' '.join(ends)}")

    def do_pingall(self, arg: str) -> None:
        """pingall [TIMEOUT]: every node pings every other node's overlay address once (through the relays)."""
        wait = arg.strip() or "1"
        pairs = [(a, b) for a in self.lab.nodes for b in self.lab.nodes if a != b]

        def ping(pair: tuple[str, str]) -> bool:
            a, b = pair
            return self.lab.run(a, ["ping", "-c1", "-W", wait, "-n", "-q", self.lab.nodes[b].overlay_ip],
                                timeout=float(wait) + 10).returncode == 0

        with ThreadPoolExecutor(max_workers=8) as pool:
            ok = dict(zip(pairs, pool.map(ping, pairs)))
        for a in self.lab.nodes:
            self.say(f"{a} -> " + " ".join(b if ok[(a, b)] else "X" for b in self.lab.nodes if b != a))
        lost = sum(1 for v in ok.values() if not v)
        self.say(f"*** Results: {100 * lost // max(len(ok), 1)}% dropped ({len(ok) - lost}/{len(ok)} received)")
        if lost:
            self.failed = True

    def do_link(self, arg: str) -> None:
        """link A B down|up: take the link between nodes A and B down, or back up."""
        words = arg.split()
        if len(words) != 3 or words[2] not in ("up", "down"):
            self.fail("usage: link A B down|up")
            return
        lk = self.lab.link(words[0], words[1])
        self.lab.link_state(lk, words[2] == "up")
        self.say(f"link {lk.name} {words[2]}")

    def do_stats(self, arg: str) -> None:
        """stats [NODE] [--json]: relay counters (packets each way, per peer, drops)."""
        words = arg.split()
        as_json = "--json" in words
        names = [w for w in words if w != "--json"] or list(self.lab.nodes)
        for name in names:
            c = self.lab.counters(name)
            if as_json:
                self.say(json.dumps({name: c}, sort_keys=True))
                continue
            d = c.get("dev", {})
            peers = ", ".join(f"{p} rx {v.get('rx_packets', 0)} tx {v.get('tx_packets', 0)}"
                              f"{'' if v.get('connected') else ' (not connected)'}"
                              for p, v in (c.get("peers") or {}).items())
            drops = ", ".join(f"{k}={v}" for k, v in sorted((c.get("drops") or {}).items())) or "none"
            self.say(f"{name}: dev rx {d.get('rx_packets', 0)} tx {d.get('tx_packets', 0)}; {peers}; drops {drops}")

    def do_exit(self, arg: str) -> bool:
        """exit: leave the shell (the lab stays up)."""
        return True

    do_quit = do_exit
    do_EOF = do_exit  # noqa: N815 - cmd's name for end of input


@click.command("cli")
@click.argument("run_id", required=False)
def cli_cmd(run_id: str | None) -> None:
    """An interactive shell into the running lab RUN_ID (the only one if left out); commands on stdin work too."""
    require_root("tunlab cli")
    from tunlab.cli.lab import _pick_run

    lab = AttachedLab(_pick_run(run_id, ("up", "running"), "cli"))
    shell = LabShell(lab, stdin=sys.stdin, stdout=sys.stdout)
    if sys.stdin.isatty():
        shell.intro = (f"lab {lab.run_id}: {len(lab.nodes)} nodes, {len(lab.links)} links. "
                       "help lists the commands; exit leaves (the lab stays up).")
    shell.cmdloop()
    if shell.failed and not sys.stdin.isatty():
        sys.exit(1)
