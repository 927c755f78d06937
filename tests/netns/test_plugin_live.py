"""On a machine that can run netns tests, the plugin's check says so (the probe really makes a namespace)."""

from __future__ import annotations

import pytest

from tunlab.testing import gating


@pytest.mark.netns
def test_netns_check_passes_here() -> None:
    assert gating.netns_unavailable_reason() is None
    assert gating._can_unshare_net()
