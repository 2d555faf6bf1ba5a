"""The one (low, central, high) type."""

from __future__ import annotations

import dataclasses
import json

import numpy as np

from agent.accounting.band import Band


def test_bands_add_bound_by_bound() -> None:
    assert Band(1, 2, 3) + Band(10, 20, 30) == Band(11, 22, 33)
    assert sum((Band(1, 2, 3) for _ in range(4)), Band.exact(0)) == Band(4, 8, 12)


def test_scaling_and_division_keep_the_bounds_apart() -> None:
    assert Band(1, 2, 4) * 0.5 == Band(0.5, 1.0, 2.0)
    assert Band(3.0, 6.0, 9.0) / 3 == Band(1.0, 2.0, 3.0)


def test_map_and_combine_work_on_any_unit() -> None:
    rates = Band(np.array([1.0, 2.0]), np.array([2.0, 3.0]), np.array([4.0, 5.0]))
    assert rates.map(lambda a: float(a.sum())) == Band(3.0, 5.0, 9.0)
    assert Band(5, 7, 9).combine(Band(1, 2, 3), lambda a, b: a - b) == Band(4, 5, 6)


def test_a_band_unpacks_low_central_high() -> None:
    low, central, high = Band(1, 2, 3)
    assert (low, central, high) == (1, 2, 3)
    assert list(Band.exact(7)) == [7, 7, 7]


def test_a_parametrised_alias_constructs_bands() -> None:
    flop = Band[int]
    assert flop(1, 2, 3) == Band(1, 2, 3)
    assert flop.exact(0) == Band(0, 0, 0)


def test_serialises_as_a_low_central_high_object() -> None:
    assert json.dumps(dataclasses.asdict(Band(1, 2, 3))) == '{"low": 1, "central": 2, "high": 3}'
