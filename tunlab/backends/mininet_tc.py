"""Link shaping options for the Mininet backend, and the netem check that keeps labs honest.

Mininet's ``TCLink(delay=..., loss=...)`` asks ``tc`` for a ``netem`` qdisc. On a kernel built without
netem, ``tc`` fails, Mininet logs the error and goes on: the link then has no delay and no loss while the
lab claims it has. This module refuses such options up front, with one line that says why.

Pure except :func:`netem_available`, which runs ``tc`` once inside a throwaway network namespace (the
namespace belongs to the probe process and disappears with it: nothing is created on the host).
"""

from __future__ import annotations

import gzip
import math
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache

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


def require_netem_for(shaping: LinkShaping, *, where: str, netem: bool | None = None) -> None:
    """Raise :class:`NetemUnavailable` when ``shaping`` needs netem and the kernel lacks it.

    ``netem`` overrides the probe (tests pass it; None = probe this machine once).
    """
    if not shaping.needs_netem:
        return
    have = netem_available() if netem is None else netem
    if not have:
        wanted = [name for name in NETEM_OPTIONS if getattr(shaping, name) not in (None, 0, 0.0)]
        # the explanation is part of the message: callers may replace the hint with their own
        raise NetemUnavailable(f"{where}: {', '.join(wanted)} need(s) netem; {NETEM_HINT}")


# --- probing the kernel ------------------------------------------------------------------------------

def netem_from_kernel_config(text: str) -> bool | None:
    """Read netem support from a kernel config: True/False, or None when the config does not say."""
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("CONFIG_NET_SCH_NETEM="):
            return line.split("=", 1)[1] in ("y", "m")
        if line == "# CONFIG_NET_SCH_NETEM is not set":
            return False
    return None


def netem_from_tc_result(returncode: int, stderr: str) -> bool:
    """Interpret ``tc qdisc add dev lo root netem ...`` run in a fresh namespace."""
    if returncode == 0:
        return True
    lowered = stderr.lower()
    if "unknown" in lowered or "not supported" in lowered or "no such file" in lowered:
        return False
    # Any other failure (no permission, tc missing) says nothing about netem itself.
    raise TunlabError(f"could not probe for netem: tc said {stderr.strip() or f'exit {returncode}'}",
                      "run as root with iproute2 installed")


def _probe_with_tc() -> bool | None:
    tc = shutil.which("tc")
    if tc is None:
        return None
    # A namespace that belongs to this one command: it vanishes when the command exits.
    for wrapper in (["unshare", "--net"], ["mnexec", "-n"]):
        if shutil.which(wrapper[0]) is None:
            continue
        proc = subprocess.run([*wrapper, tc, "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms"],
                              capture_output=True, text=True, timeout=10, check=False)
        if proc.returncode != 0 and "operation not permitted" in proc.stderr.lower():
            return None
        return netem_from_tc_result(proc.returncode, proc.stderr)
    return None


def _probe_kernel_config() -> bool | None:
    try:
        with gzip.open("/proc/config.gz", "rt") as fh:
            return netem_from_kernel_config(fh.read())
    except OSError:
        return None


@lru_cache(maxsize=1)
def netem_available() -> bool:
    """Whether ``tc qdisc ... netem`` works on this kernel (probed once per process).

    As root: a real ``tc`` call in a namespace of its own. Otherwise the kernel config, and when that
    says nothing, False (a lab that claims delay or loss it cannot prove is worse than a refusal).
    """
    import os

    if os.geteuid() == 0:
        found = _probe_with_tc()
        if found is not None:
            return found
    found = _probe_kernel_config()
    return bool(found)
