"""Finding Debian's Mininet, and saying how to install it when it is missing.

This is the only place in tunlab that imports ``mininet`` (lazily, when the Mininet backend or the Mininet
user API is used). Everything else in tunlab works without it.
"""

from __future__ import annotations

import importlib
import importlib.util
import shutil
import sys
from types import ModuleType

from tunlab.errors import CannotRunHere

INSTALL_HINT = ("install it with 'sudo apt-get install mininet bridge-utils', then make Debian's module importable "
                "from the Python that runs tunlab: 'tunlab link-mininet' in your own venv (scripts/setup.sh does "
                "it for a clone's .venv)")


class MininetMissing(CannotRunHere):
    """Mininet (the Python module or its mnexec helper) is not installed."""


def mininet_unavailable_reason() -> str | None:
    """One line saying why the Mininet backend cannot run here, or None when it can."""
    try:
        importlib.import_module("mininet")
    except ImportError:
        return f"Mininet is not installed (the 'mininet' module is not importable from {sys.executable})"
    if shutil.which("mnexec") is None:
        return "Mininet is not installed (its 'mnexec' helper is not on PATH)"
    return None


def _find_spec(name: str) -> object | None:
    try:
        return importlib.util.find_spec(name)
    except (ImportError, ValueError):  # ValueError: sys.modules[name] is None (import blocked)
        return None


def import_mininet() -> ModuleType:
    """Import and return the ``mininet`` package, or raise :class:`MininetMissing` with the fix."""
    require_mininet()
    return importlib.import_module("mininet")


def require_mininet(*, probe_import: bool = True) -> None:
    """Raise :class:`MininetMissing` (one line with the install command) unless Mininet is usable.

    ``probe_import=False`` only looks for the module (no import), for checks that must stay cheap."""
    if probe_import:
        reason = mininet_unavailable_reason()
    elif _find_spec("mininet") is None:
        reason = f"Mininet is not installed (the 'mininet' module is not importable from {sys.executable})"
    elif shutil.which("mnexec") is None:
        reason = "Mininet is not installed (its 'mnexec' helper is not on PATH)"
    else:
        reason = None
    if reason is not None:
        # the install command is part of the message: callers may replace the hint with their own
        raise MininetMissing(f"--backend mininet: {reason}; {INSTALL_HINT}")
