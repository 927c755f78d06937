"""The backend interface: what a lab needs from the thing that makes nodes and links.

A backend gets a :class:`tunlab.model.plan.LabPlan` (names, addresses, relay command lines: all decided) and the
run's :class:`tunlab.lab.ledger.Ledger`. It implements four steps and the removers for its own ledger entries:

1. :meth:`Backend.create_nodes` -- one network namespace per node (named, or a process's), quiet
   (no IPv6 on lab links), forwarding on for kernel VNFs, rp_filter and send_redirects off, lo up,
   and the node's persistent TUN device (``plan.overlay_dev``; relays open it with ``--attach``);
2. :meth:`Backend.create_links` -- the underlay veth pairs (``plan.links``);
3. :meth:`Backend.configure_nodes` -- addresses, MTU, link state, tx checksum offload off on veths (kept on
   UDP hops of the fast datapath: ``nsutil.gso_links``), TUN address and MTU, VNF routes and nftables rulesets;
4. :meth:`Backend.netns_file` -- the path that enters a node (``/run/netns/NAME`` or ``/proc/PID/ns/net``).

Every step appends ledger entries *before* it creates anything; :meth:`Backend.removers` maps each
entry ``op`` it writes to a function that removes such entries (given in reverse order, grouped).
The base class supplies the rest: running commands in nodes (``nsenter``, recorded in the ledger), loading
nftables rulesets, and teardown by ledger replay. Relays are started and supervised by
:mod:`tunlab.lab.relays`, which asks the backend only for ``netns_file`` and ``spawn``.
"""

from __future__ import annotations

import os
import subprocess
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

from tunlab.errors import TunlabError
from tunlab.lab.ledger import ENV_TAG, Ledger, Remover, remove_files, remove_processes, replay
from tunlab.system.procs import proc_start_time
from tunlab.model.plan import LabPlan, NodePlan


class Backend(ABC):
    """Makes the nodes and links of a plan and removes them by ledger; the relays are
    :class:`tunlab.lab.relays.RelaySupervisor`'s business."""

    name: ClassVar[str] = "?"

    def __init__(self, plan: LabPlan, ledger: Ledger) -> None:
        self.plan = plan
        self.ledger = ledger
        self.timings: dict[str, float] = {}

    # ------------------------------------------------------------------ what a backend implements
    @abstractmethod
    def create_nodes(self) -> None:
        """Namespaces (with sysctls, lo, TUN) for every node in ``self.plan.nodes``."""

    @abstractmethod
    def create_links(self) -> None:
        """The veth pairs of ``self.plan.links``, each end directly in its node's namespace."""

    @abstractmethod
    def configure_nodes(self) -> None:
        """Addresses, MTU and state of every interface; TUN address; routes and nftables rules."""


    def apply_nft(self, nodes: Sequence[NodePlan]) -> None:
        """Load each node's nftables ruleset inside its namespace (all at once); name the first failure."""
        procs = []
        for n in nodes:
            p = subprocess.Popen(["nsenter", f"--net={self.netns_file(n.name)}", "--", "nft", "-f", "-"],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            procs.append((n, p))
        failed = []
        for n, p in procs:
            out, _ = p.communicate((n.nft or "").encode(), timeout=30)
            if p.returncode != 0:
                failed.append((n, out.decode(errors="replace").strip().replace("\n", " | ")))
        if failed:
            n, msg = failed[0]
            raise TunlabError(f"node {n.name} field 'nft': nft rejected the ruleset: {msg[:400]}",
                              "check the ruleset with `nft -c -f FILE`")

    @abstractmethod
    def netns_file(self, node: str) -> str:
        """A path to open to enter ``node``'s network namespace."""

    @classmethod
    def removers(cls, ledger: Ledger) -> dict[str, Remover]:
        """op -> remover, for every ledger entry this backend writes (also used by `tunlab clean`)."""
        return {"proc": remove_processes(ledger.run_id, lambda: cls.netns_files(ledger)), "file": remove_files}

    @classmethod
    def netns_files(cls, ledger: Ledger) -> list[str]:
        """The files of the run's network namespaces that still exist (from its ledger): every process
        inside them belongs to the run and is stopped at teardown, however it was started."""
        return []

    # ------------------------------------------------------------------ shared machinery
    def build(self) -> None:
        """The three building steps in order; ``self.timings`` records seconds per step."""
        steps: list[tuple[str, Callable[[], object]]] = [
            ("nodes", self.create_nodes), ("links", self.create_links), ("configure", self.configure_nodes)]
        for name, step in steps:
            t0 = time.perf_counter()
            step()
            self.timings[name] = time.perf_counter() - t0

    def env(self) -> dict[str, str]:
        return {**os.environ, ENV_TAG: self.ledger.run_id}

    def spawn(self, node: str, argv: Sequence[str], *, role: str = "cmd", **kw: Any) -> subprocess.Popen[Any]:
        """Start ``argv`` inside ``node``, tagged with this run and recorded in the ledger (pid, start)."""
        kw["env"] = {**(kw.get("env") or os.environ), ENV_TAG: self.ledger.run_id}
        kw.setdefault("start_new_session", True)
        p = subprocess.Popen(["nsenter", f"--net={self.netns_file(node)}", "--", *argv], **kw)
        # nsenter execs the command: this pid is the command's pid
        self.ledger.append({"op": "proc", "node": node, "role": role, "pid": p.pid,
                            "start": proc_start_time(p.pid), "argv0": argv[0], "argv": list(argv)})
        return p

    def teardown(self) -> list[str]:
        """Remove everything the ledger records, newest first; one line per problem."""
        return replay(self.ledger, self.removers(self.ledger))
