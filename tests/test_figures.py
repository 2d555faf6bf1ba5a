"""Figures as people read them: two significant figures, bands rounded outwards."""

from __future__ import annotations

import pytest

from agent import figures


@pytest.mark.parametrize(("value", "nearest", "down", "up"), [
    (1.05e15, "1.0e+15", "1.0e+15", "1.1e+15"),
    (99.9, "1.0e+02", "9.9e+01", "1.0e+02"),
    (123456789012345678901234567, "1.2e+26", "1.2e+26", "1.3e+26"),
    (6.6e23, "6.6e+23", "6.6e+23", "6.6e+23"),
])
def test_two_significant_figures_round_the_band_outwards(
    value: float, nearest: str, down: str, up: str
) -> None:
    rounded = (figures.flop(value), figures.flop(value, "down"), figures.flop(value, "up"))
    assert rounded == (nearest, down, up)


def test_a_band_reads_central_then_low_and_high() -> None:
    assert figures.band(95, 100, 105) == "1.0e+02 [9.5e+01 .. 1.1e+02]"


def test_times_durations_and_energy() -> None:
    assert figures.when(1_750_000_000 * 10**9) == "2025-06-15 15:06:40Z"
    assert figures.when(None) == "-"
    assert [figures.duration(s) for s in (5, 600, 9000, 3 * 86400)] == [
        "5 s", "10 min", "2.5 h", "3.0 d"]
    assert figures.energy(3.6e9) == "1.00 kWh"
    assert figures.energy(3.6e12) == "1.00 MWh"
