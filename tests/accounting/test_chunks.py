"""Grouping a chunk's rows by GPU: the regular layout of kept-back ticks, and joining
ticks' float fields."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from agent.accounting.accountant import _joined_fields
from agent.accounting.chunks import GpuGroups
from agent.sources.base import FLOAT_FIELDS, SampleBatch


@pytest.mark.parametrize("n_gpus", [1, 2, 3, 8, 9])
@pytest.mark.parametrize("ticks", [1, 2, 5, 12])
def test_of_ticks_is_of_the_tiled_rows(n_gpus: int, ticks: int) -> None:
    expected = GpuGroups.of(np.tile(np.arange(n_gpus, dtype=np.int64), ticks), n_gpus)
    got = GpuGroups.of_ticks(n_gpus, ticks)
    for name in ("order", "offsets", "counts", "present", "firsts", "lasts"):
        a, b = getattr(got, name), getattr(expected, name)
        assert a.dtype == b.dtype, name
        assert np.array_equal(a, b), name
        assert a.flags.c_contiguous or a.ndim == 1, name
    assert got.one_row_each == expected.one_row_each


def _batch(seed: int, n: int = 4) -> SampleBatch:
    batch = SampleBatch.empty(n, 1000 + seed, 2000 + seed)
    block = batch.float_rows()
    assert block is not None
    block[...] = np.random.default_rng(seed).random(block.shape)
    return batch


def test_float_rows_are_the_fields_until_one_is_replaced() -> None:
    batch = _batch(1)
    block = batch.float_rows()
    assert block is not None
    assert block.shape == (len(FLOAT_FIELDS), 4)
    for k, name in enumerate(FLOAT_FIELDS):
        assert np.shares_memory(block[k], getattr(batch, name))
        assert np.array_equal(block[k], getattr(batch, name))
    replaced = dataclasses.replace(batch, power_mw=batch.power_mw.copy())
    assert replaced.float_rows() is None
    assert dataclasses.replace(batch, float_block=None).float_rows() is None


@pytest.mark.parametrize("replace_one", [False, True])
def test_joined_fields_are_each_field_end_to_end(replace_one: bool) -> None:
    batches = [_batch(seed) for seed in range(5)]
    if replace_one:  # one batch without rows of a block: the field-by-field path
        batches[2] = dataclasses.replace(batches[2], energy_mj=batches[2].energy_mj + 1.0)
    joined = _joined_fields(batches)
    assert list(joined) == list(FLOAT_FIELDS)
    for name in FLOAT_FIELDS:
        expected = np.concatenate([getattr(b, name) for b in batches])
        assert joined[name].tobytes() == expected.tobytes(), name
