"""TUNLAB_TIME_SCALE stretches default readiness deadlines on slow machines, and only valid factors count."""

from __future__ import annotations

import pytest

from tunlab.system.pace import patient, time_scale


@pytest.mark.parametrize(("raw", "factor"), [("", 1.0), ("4", 4.0), ("2.5", 2.5), ("0.5", 1.0), ("-3", 1.0),
                                             ("fast", 1.0), ("nan", 1.0), ("inf", 1.0)])
def test_the_factor_is_a_number_of_at_least_one(monkeypatch: pytest.MonkeyPatch, raw: str, factor: float) -> None:
    monkeypatch.setenv("TUNLAB_TIME_SCALE", raw)
    assert time_scale() == factor
    assert patient(10.0) == 10.0 * factor


def test_unset_means_as_written(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TUNLAB_TIME_SCALE", raising=False)
    assert patient(7.5) == 7.5
