"""Link shaping options of the description (``Link(shaping={...})``): parsed and checked, pure.

The options are Mininet's ``TCLink`` names (bw in Mbit/s, delay, jitter, loss, max_queue_size, use_tbf,
use_hfsc); both backends apply the same parsed :class:`LinkShaping`. Whether the kernel can honour the
netem options is a question for the machine, asked by :mod:`tunlab.lab.backends.netem`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from tunlab.errors import TunlabError

#: link options that Mininet implements with netem (they do nothing without it)
NETEM_OPTIONS = ("delay", "jitter", "loss", "max_queue_size")
#: link options that work with htb/tbf only
RATE_OPTIONS = ("bw", "use_tbf", "use_hfsc")
#: Mininet ignores (with a log line) rates outside this range, in Mbit/s
BW_MAX_MBIT = 1000.0

NETEM_HINT = ("this kernel has no netem qdisc (CONFIG_NET_SCH_NETEM) and Mininet would silently skip it: "
              "drop the option or use a kernel with sch_netem; bw= (htb/tbf) works without it")


class LinkOptionError(TunlabError):
    """A link shaping option the backend cannot honour."""


class NetemUnavailable(LinkOptionError):
    """A link asks for delay/loss/jitter/queue limit and the kernel has no netem."""


@dataclass(frozen=True)
class LinkShaping:
    """Validated shaping of one link, in the units Mininet's TCIntf expects."""

    bw: float | None = None            # Mbit/s
    delay: str | None = None           # e.g. "5ms"
    jitter: str | None = None          # e.g. "1ms"
    loss: float | None = None          # percent, 0..100
    max_queue_size: int | None = None  # packets
    use_tbf: bool = False
    use_hfsc: bool = False

    @property
    def needs_netem(self) -> bool:
        return any(getattr(self, name) not in (None, 0, 0.0) for name in NETEM_OPTIONS)

    @property
    def empty(self) -> bool:
        return self.bw is None and not self.needs_netem

    def tclink_params(self) -> dict[str, object]:
        """Keyword arguments for ``TCLink`` / ``TCIntf.config`` (only the options that are set)."""
        out: dict[str, object] = {}
        for name in ("bw", "delay", "jitter", "loss", "max_queue_size"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        if self.use_tbf:
            out["use_tbf"] = True
        if self.use_hfsc:
            out["use_hfsc"] = True
        return out


_TIME_UNITS = ("us", "usec", "ms", "msec", "s", "sec")


def _time_value(where: str, name: str, value: object) -> str:
    if isinstance(value, bool):
        raise LinkOptionError(f"{where}: {name} must be a time such as '5ms', not {value!r}")
    if isinstance(value, int | float):
        if value < 0 or not math.isfinite(value):
            raise LinkOptionError(f"{where}: {name} must be >= 0, got {value!r}")
        return f"{value}ms"
    if isinstance(value, str):
        text = value.strip()
        for unit in sorted(_TIME_UNITS, key=len, reverse=True):
            if text.endswith(unit):
                number = text[: -len(unit)]
                try:
                    if float(number) >= 0:
                        return text
                except ValueError:
                    break
        raise LinkOptionError(f"{where}: {name}={value!r} is not a time",
                              "write it like '5ms', '200us' or '1s' (a bare number means ms)")
    raise LinkOptionError(f"{where}: {name} must be a time such as '5ms', not {type(value).__name__}")


def _number(where: str, name: str, value: object, lo: float, hi: float, unit: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        if isinstance(value, str):
            try:
                value = float(value.strip().rstrip("%"))
            except ValueError:
                raise LinkOptionError(f"{where}: {name}={value!r} is not a number") from None
        else:
            raise LinkOptionError(f"{where}: {name} must be a number, not {type(value).__name__}")
    number = float(value)
    if not math.isfinite(number) or not lo <= number <= hi:
        raise LinkOptionError(f"{where}: {name}={value!r} is out of range",
                              f"Mininet accepts {lo:g}..{hi:g} {unit} and silently ignores other values")
    return number


def parse_link_options(options: Mapping[str, object] | None, *, where: str = "link") -> LinkShaping:
    """Check a link's shaping options and return them typed; refuse unknown or out-of-range values.

    ``where`` names the link in messages (e.g. ``"topology.py, links[2]"``).
    """
    if not options:
        return LinkShaping()
    known = set(NETEM_OPTIONS) | set(RATE_OPTIONS)
    unknown = sorted(set(options) - known)
    if unknown:
        raise LinkOptionError(f"{where}: unknown link option(s) {', '.join(unknown)}",
                              f"known options: {', '.join(sorted(known))}")
    bw = options.get("bw")
    delay = options.get("delay")
    jitter = options.get("jitter")
    loss = options.get("loss")
    queue = options.get("max_queue_size")
    shaped = LinkShaping(
        bw=None if bw is None else _number(where, "bw", bw, 0.001, BW_MAX_MBIT, "Mbit/s"),
        delay=None if delay is None else _time_value(where, "delay", delay),
        jitter=None if jitter is None else _time_value(where, "jitter", jitter),
        loss=None if loss is None else _number(where, "loss", loss, 0.0, 100.0, "percent"),
        max_queue_size=None if queue is None else int(_number(where, "max_queue_size", queue, 1, 10**7,
                                                                  "packets")),
        use_tbf=bool(options.get("use_tbf", False)),
        use_hfsc=bool(options.get("use_hfsc", False)),
    )
    if shaped.jitter is not None and shaped.delay is None:
        raise LinkOptionError(f"{where}: jitter needs a delay", "add delay='...' or drop jitter")
    if (shaped.use_tbf or shaped.use_hfsc) and shaped.bw is None:
        raise LinkOptionError(f"{where}: use_tbf/use_hfsc need bw", "add bw=<Mbit/s>")
    if shaped.use_tbf and shaped.use_hfsc:
        raise LinkOptionError(f"{where}: use_tbf and use_hfsc exclude each other", "keep one of them")
    return shaped


#: netem options the relays can take over on a kernel without netem (issue 17)
RELAY_OPTIONS = ("delay", "jitter", "loss")


def _relay_time(text: str) -> str:
    for long, short in (("usec", "us"), ("msec", "ms"), ("sec", "s")):
        if text.endswith(long):
            return text[: -len(long)] + short
    return text


def netem_to_relay(topo: object) -> tuple[object, list[str]]:
    """A topology whose links' netem options (delay, jitter, loss: Mininet's TCLink names) become the
    relays' impairments of both directions (``Link.impair``), as netem on both veth ends would do, for a
    kernel without netem; what is left in ``shaping`` (bw, max_queue_size) stays for tc. Returns it and
    one line per link moved."""
    from dataclasses import replace

    links, notes = [], []
    for lk in topo.links:  # type: ignore[attr-defined]
        shaped = parse_link_options(dict(lk.shaping), where=f"link '{lk.name}' field 'shaping'") \
            if lk.shaping else LinkShaping()
        words = []
        if shaped.delay is not None:
            words.append(f"delay={_relay_time(shaped.delay)}")
        if shaped.jitter is not None:
            words.append(f"jitter={_relay_time(shaped.jitter)}")
        if shaped.loss:
            words.append(f"loss={shaped.loss:g}%")
        if not words:
            links.append(lk)
            continue
        rest = {k: v for k, v in dict(lk.shaping).items() if k not in RELAY_OPTIONS}
        impair = " ".join(w for w in (" ".join(words), lk.impair or "") if w)
        links.append(replace(lk, shaping=rest or None, impair=impair))
        notes.append(f"link {lk.name}: {' '.join(words)} by the relays (no netem on this kernel)")
    return (replace(topo, links=tuple(links)) if notes else topo), notes  # type: ignore[type-var]
