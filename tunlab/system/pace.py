"""How patient readiness waits are on this machine.

Default deadlines (a relay's ready line, relays connected, captures armed) are sized for an ordinary
Linux machine. On a much slower one (a VM under software emulation, a loaded CI runner) set
``TUNLAB_TIME_SCALE=N`` (a number >= 1) and every default deadline is N times as long; explicit
timeouts given by the caller are never scaled. vagrant/vm.sh sets it when the VM runs without KVM.
"""

from __future__ import annotations

import math
import os


def time_scale() -> float:
    """The factor from ``TUNLAB_TIME_SCALE`` (1 when unset or not a number >= 1)."""
    raw = os.environ.get("TUNLAB_TIME_SCALE", "")
    try:
        value = float(raw)
    except ValueError:
        return 1.0
    return value if math.isfinite(value) and value >= 1.0 else 1.0


def patient(seconds: float) -> float:
    """A default deadline scaled for this machine."""
    return seconds * time_scale()
