"""The netem check that keeps labs honest.

Mininet's ``TCLink(delay=..., loss=...)`` asks ``tc`` for a ``netem`` qdisc. On a kernel built without
netem, ``tc`` fails, Mininet logs the error and goes on: the link then has no delay and no loss while the
lab claims it has. Both backends refuse such options up front, with one line that says why.

:func:`netem_available` runs ``tc`` once inside a throwaway network namespace (the namespace belongs to
the probe process and disappears with it: nothing is created on the host).
"""

from __future__ import annotations

import gzip
import shutil
import subprocess
from functools import lru_cache

from tunlab.errors import TunlabError
from tunlab.model.shaping import NETEM_HINT, NETEM_OPTIONS, LinkShaping, NetemUnavailable


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
