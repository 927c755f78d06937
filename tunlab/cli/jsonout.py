"""``--json`` output of ``tunlab ls``, ``show`` and ``run``: plain JSON objects (one per command), stable keys.

Every object carries ``"schema": "tunlab.<command>/1"``; a key is only ever added, never renamed, within one
schema version. The shapes are pinned by tests/unit/test_cli_json.py.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the verdict (scapy) is imported only by `run`
    from tunlab.verdict.checks import CheckResult, ScenarioResult


def dumps(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=False, default=str)


# ------------------------------------------------------------------------------------------------ show


def topology_json(t: Any, *, routes: bool = True) -> dict[str, Any]:
    from tunlab.model.topology import Endpoint

    nodes = []
    for n in t.nodes:
        node: dict[str, Any] = {"name": n.name, "role": "endpoint" if isinstance(n, Endpoint) else "vnf",
                                "overlay": n.overlay}
        if not isinstance(n, Endpoint):
            node["kind"] = n.kind
            node["nft"] = bool(n.nft)
            node["routes"] = [{"dst": r.dst, "type": r.type} for r in n.routes]
            if n.kind == "hook":
                node["hook"] = n.hook if isinstance(n.hook, str) else getattr(n.hook, "__name__", str(n.hook))
        nodes.append(node)
    links = [{"name": lk.name, "transport": lk.transport,
              "a": {"node": lk.a, "addr": lk.a_addr, "port": lk.a_port},
              "b": {"node": lk.b, "addr": lk.b_addr, "port": lk.b_port},
              "shaping": dict(lk.shaping) if lk.shaping else None,
              "impair": lk.impairs() or None} for lk in t.links]
    out: dict[str, Any] = {
        "schema": "tunlab.show/1", "name": t.name, "source": t.source, "description": t.description,
        "overlay": t.overlay_net, "mtu": t.mtu, "datapath": t.datapath, "nodes": nodes, "links": links,
        "paths": [{"nodes": list(p.nodes), "prefixes": list(p.prefixes)} for p in t.paths],
    }
    if routes:
        from tunlab.model.plan import collapse_routes

        out["routes"] = {n.name: [{"prefix": p, "next_hop": peer} for p, peer in collapse_routes(t.routes_for(n.name))]
                         for n in t.nodes}
    return out


# ------------------------------------------------------------------------------------------------ ls


def run_json(led: Any, state: str, user: str | None) -> dict[str, Any]:
    m = led.meta()
    owner = m.get("owner") or {}
    created = m.get("created")
    return {"run": led.run_id, "name": m.get("name"), "state": state, "backend": m.get("backend"),
            "topology": m.get("topology"), "nodes": sorted(m.get("nodes") or {}),
            "created": created, "age_s": round(time.time() - created, 1) if isinstance(created, (int, float)) else None,
            "user": user, "uid": m.get("uid"), "owner_pid": owner.get("pid"), "dir": str(led.dir)}


# ------------------------------------------------------------------------------------------------ run


def check_json(check: CheckResult, flow: str | None) -> dict[str, Any]:
    return {"flow": flow, "name": check.name, "passed": check.passed, "message": check.message,
            "hop": check.hop, "last_seen": check.last_seen}


def result_json(r: ScenarioResult) -> dict[str, Any]:
    checks = [check_json(c, f.probe.name) for f in r.flows for c in f.checks] + [check_json(c, None) for c in r.links]
    return {"name": r.name, "source": r.source, "topology": r.topology, "passed": r.passed, "error": r.error,
            "run_id": r.run_id, "seed": r.seed, "duration_s": round(r.duration_s, 3), "results_dir": r.results_dir,
            "chains": list(r.chains),
            "probes": [{"name": f.probe.name, "expect": f.probe.expect.describe(), "passed": f.passed}
                       for f in r.flows],
            "checks": checks, "failed": [c for c in checks if not c["passed"]], "notes": list(r.notes)}


def results_json(results: list[ScenarioResult], seed: int, exit_code: int) -> dict[str, Any]:
    return {"schema": "tunlab.run/1", "passed": all(r.passed for r in results), "exit_code": exit_code,
            "seed": seed, "scenarios": [result_json(r) for r in results]}
