"""Run-time link impairments of a lab (issue 17): which relay impairs which direction of a link, and the
control-socket requests that change it. Shared by ``Lab.impair`` (a lab of this process) and ``tunlab
impair`` / ``tunlab link`` (a running lab seen through its ledger, lab/attach.py).

Direction ``x>y`` of a link is impaired in x's relay, on its send path toward peer y (the plan names each
relay's peers after the neighbouring nodes).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from tunlab.errors import TunlabError


def directions(link: str, a: str, b: str, which: str | None) -> list[tuple[str, str]]:
    """``which``: None or "both" (both directions), "a>b", "b>a", or "X>Y" with node names."""
    if which in (None, "", "both"):
        return [(a, b), (b, a)]
    if which == "a>b":
        return [(a, b)]
    if which == "b>a":
        return [(b, a)]
    x, sep, y = which.partition(">")
    if sep and {x, y} == {a, b} and x != y:
        return [(x, y)]
    raise TunlabError(f"link {link}: direction {which!r} is not one of its directions",
                      f"use {a}>{b}, {b}>{a}, a>b, b>a or both")


def request(spec: str | dict[str, Any] | None = None, *, clear: bool = False,
            state: str | None = None) -> dict[str, Any]:
    """The control request for one direction (relay/control.py ``stage`` / ``link``)."""
    if state is not None:
        if state not in ("down", "up"):
            raise TunlabError(f"link state {state!r} is not down or up")
        return {"cmd": "link", "state": state}
    if spec is None and not clear:
        raise TunlabError("say what to change", "give impairments (delay=20ms loss=1%), or --clear")
    out: dict[str, Any] = {"cmd": "stage", "stage": "impair"}
    if clear:
        out["clear"] = True
    if spec:
        out["set"] = spec
    return out


def apply(link: str, a: str, b: str, which: str | None, req: dict[str, Any],
          control_of: Callable[[str], str]) -> list[dict[str, Any]]:
    """Send ``req`` to the relay of each chosen direction; the relays' replies, with ``dir`` added. The
    spec is checked before anything is sent, so a bad one changes no direction."""
    from tunlab.relay.control import control_request
    from tunlab.relay.impair import ImpairError, parse_spec

    if "set" in req:
        try:
            parse_spec(req["set"])
        except ImpairError as exc:
            raise TunlabError(f"link {link}: {exc.message}", exc.hint) from None
    replies = []
    for x, y in directions(link, a, b, which):
        reply = control_request(control_of(x), {**req, "peer": y})
        replies.append({"dir": f"{x}>{y}", **{k: v for k, v in reply.items() if k != "ok"}})
    return replies


def find_link(links: Sequence[Any], name: str) -> Any:
    """A link by its name (``a-b``), or by its two node names either way round (``b-a``)."""
    for lk in links:
        if lk.name == name:
            return lk
    x, _, y = name.partition("-")
    for lk in links:
        if {lk.a if isinstance(lk.a, str) else lk.a.node, lk.b if isinstance(lk.b, str) else lk.b.node} == {x, y}:
            return lk
    raise TunlabError(f"no link named {name!r}", f"links: {', '.join(lk.name for lk in links) or 'none'}")
