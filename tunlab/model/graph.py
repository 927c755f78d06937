"""A topology as a picture: Graphviz dot and Mermaid text (``tunlab graph``). Pure.

:func:`graph_data` reduces a topology to plain data (nodes, links, paths), which a running lab also keeps in
its ledger's meta.json, so ``tunlab graph RUN`` draws the lab as it was built, with each relay's state.
"""

from __future__ import annotations

from typing import Any

from tunlab.model.topology import Endpoint, Topology

Graph = dict[str, Any]
#: relay state -> colour (dot) / class (mermaid)
STATE_COLOURS = {"up": "darkgreen", "degraded": "orange", "dead": "red", "unknown": "grey40"}


def _does(n: Any) -> str:
    if isinstance(n, Endpoint):
        return "endpoint"
    if n.kind == "hook":
        hook = n.hook if isinstance(n.hook, str) else getattr(n.hook, "__name__", "hook")
        return f"hook {hook}"
    parts = ["kernel"] + (["nftables"] if n.nft else []) + [f"{r.type} {r.dst}" for r in n.routes]
    return ", ".join(parts)


def graph_data(topo: Topology) -> Graph:
    """Nodes, links and paths of ``topo`` as JSON-able data."""
    return {
        "name": topo.name,
        "nodes": [{"name": n.name, "role": "endpoint" if isinstance(n, Endpoint) else "vnf",
                   "overlay": n.overlay, "does": _does(n)} for n in topo.nodes],
        "links": [{"name": lk.name, "a": lk.a, "b": lk.b, "a_addr": lk.a_addr, "b_addr": lk.b_addr,
                   "transport": lk.transport, "shaping": dict(lk.shaping) if lk.shaping else {}}
                  for lk in topo.links],
        "paths": [{"nodes": list(p.nodes), "prefixes": list(p.prefixes)} for p in topo.paths],
    }


def _link_label(lk: dict[str, Any]) -> str:
    shaping = ", ".join(f"{k}={v}" for k, v in sorted(lk.get("shaping", {}).items()))
    return f"{lk['transport']} {lk['a_addr']} - {lk['b_addr']}" + (f" [{shaping}]" if shaping else "")


def _esc(text: Any) -> str:
    """User text inside a dot string (its own backslashes and quotes escaped)."""
    return str(text).replace("\\", "\\\\").replace('"', '\\"')


def to_dot(g: Graph, state: dict[str, str] | None = None) -> str:
    """Graphviz dot: endpoints as boxes, VNFs as ellipses, links labelled with transport and addresses; paths
    listed in the graph's label. ``state``: node -> up/degraded/dead/unknown (a running lab's relays)."""
    lines = [f'graph "{_esc(g["name"])}" {{', "  rankdir=LR;", '  node [fontname="monospace"];',
             '  edge [fontname="monospace", fontsize=10];']
    for n in g["nodes"]:
        shape = "box" if n["role"] == "endpoint" else "ellipse"
        label = "\\n".join(_esc(x) for x in (n["name"], n["overlay"], n["does"]))
        extra = ""
        if state is not None:
            st = state.get(n["name"], "unknown")
            label += f"\\nrelay {_esc(st)}"
            extra = f", color={STATE_COLOURS.get(st, 'grey40')}"
        lines.append(f'  "{_esc(n["name"])}" [shape={shape}, label="{label}"{extra}];')
    for lk in g["links"]:
        lines.append(f'  "{_esc(lk["a"])}" -- "{_esc(lk["b"])}" [label="{_esc(_link_label(lk))}"];')
    paths = "".join(_esc(" > ".join(p["nodes"]) + (f" ({', '.join(p['prefixes'])})" if p["prefixes"] else ""))
                    + "\\l" for p in g["paths"])
    lines.append(f'  label="paths:\\l{paths}";')
    lines.append("}")
    return "\n".join(lines) + "\n"


def _mid(name: str) -> str:
    return "n_" + "".join(c if c.isalnum() or c == "_" else "_" for c in name)


def to_mermaid(g: Graph, state: dict[str, str] | None = None) -> str:
    """Mermaid flowchart (renders in GitHub/GitLab markdown): the same content as :func:`to_dot`."""
    lines = ["flowchart LR"]
    for n in g["nodes"]:
        text = f"{n['name']}<br/>{n['overlay']}<br/>{n['does']}"
        if state is not None:
            text += f"<br/>relay {state.get(n['name'], 'unknown')}"
        text = text.replace('"', "'")
        lines.append(f'  {_mid(n["name"])}["{text}"]' if n["role"] == "endpoint" else f'  {_mid(n["name"])}("{text}")')
    for lk in g["links"]:
        lines.append(f'  {_mid(lk["a"])} ---|"{_link_label(lk)}"| {_mid(lk["b"])}')
    if state is not None:
        for st, colour in STATE_COLOURS.items():
            lines.append(f"  classDef {st} stroke:{colour},stroke-width:2px")
        for n in g["nodes"]:
            lines.append(f"  class {_mid(n['name'])} {state.get(n['name'], 'unknown')}")
    for i, p in enumerate(g["paths"], 1):
        lines.append(f"  %% path {i}: {' > '.join(p['nodes'])}" + (f" ({', '.join(p['prefixes'])})" if p["prefixes"] else ""))
    return "\n".join(lines) + "\n"
