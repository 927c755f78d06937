"""Whether ``netns`` / ``mininet`` tests can run here, as one line each.

``netns_unavailable_reason`` is the one place that decides; the hooks call it through this module, so an
inner pytest run can simulate a machine without root by patching ``gating.is_root`` (or the function).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys

from tunlab.system.privileges import is_root

_PROBE = "import ctypes,os; os._exit(0 if ctypes.CDLL(None, use_errno=True).unshare(0x40000000) == 0 else 1)"


def _can_unshare_net() -> bool:
    """Create (and drop) a network namespace in a child process: proves namespaces work, touches nothing."""
    argv = ["unshare", "--net", "true"] if shutil.which("unshare") else [sys.executable, "-c", _PROBE]
    try:
        return subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, timeout=10, check=False).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def netns_unavailable_reason() -> str | None:
    """Why ``netns`` tests cannot run here, in one line, or None when they can."""
    if sys.platform != "linux":
        return f"netns tests need Linux network namespaces (this is {sys.platform})"
    if not is_root():
        return "netns tests need root (run pytest with sudo)"
    if not os.path.exists("/proc/self/ns/net"):
        return "netns tests need a kernel with network namespaces (/proc/self/ns/net is missing)"
    if not _can_unshare_net():
        return "netns tests need to create network namespaces, and unshare(CLONE_NEWNET) failed here"
    return None


def mininet_unavailable_reason(netns_reason: str | None) -> str | None:
    """Why ``mininet`` tests cannot run here (given the netns verdict), or None when they can."""
    if netns_reason is not None:
        return netns_reason.replace("netns tests", "mininet tests", 1)
    if importlib.util.find_spec("mininet") is None:
        return "mininet tests need Debian's mininet package importable (sudo bash scripts/setup.sh)"
    if shutil.which("mnexec") is None:
        return "mininet tests need mnexec on PATH (Debian package mininet)"
    return None
