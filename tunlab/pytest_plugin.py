"""pytest plugin (registered through the ``pytest11`` entry point): markers and root gating.

Fixtures and artefacts are added on top of this (see docs/ARCHITECTURE.md).
"""

from __future__ import annotations

import os

import pytest


def netns_unavailable_reason() -> str | None:
    """Why ``netns`` tests cannot run here, in one line, or None when they can."""
    if os.geteuid() != 0:
        return "netns tests need root (run pytest with sudo)"
    if not os.path.exists("/proc/self/ns/net"):
        return "netns tests need a kernel with network namespaces"
    return None


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "netns: needs root and network namespaces (skipped otherwise)")
    config.addinivalue_line("markers", "mininet: needs Debian's mininet package as well as root")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reason = netns_unavailable_reason()
    if reason is None:
        return
    skip = pytest.mark.skip(reason=reason)
    for item in items:
        if item.get_closest_marker("netns") or item.get_closest_marker("mininet"):
            item.add_marker(skip)
