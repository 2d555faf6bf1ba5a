"""Every GPU accounted whatever its peak's basis: a table row, a derived spec or its
era's ceiling; and what the records and the snapshot say of that basis."""

from __future__ import annotations

import numpy as np
import pytest

from agent.accounting.accountant import Accountant
from agent.accounting.estimate import EstimatorSettings
from agent.simrun import simulate
from agent.sources.base import ActivityKind, DeviceInfo
from agent.sources.scenarios import SCENARIOS, SimJob
from agent.sources.specs import ResolvedSpec, SpecBasis, SpecTable

NAMES = ("NVIDIA H100 80GB HBM3", "NVIDIA X999", "NVIDIA Z1")
S = 10**9
T0 = 1_700_000_000 * S


def devices() -> list[DeviceInfo]:
    return [DeviceInfo(index=i, uuid=f"GPU-{i}", name=n, spec_key=None, max_sm_clock_mhz=None,
                       activity_kind=ActivityKind.NONE, source="nvml")
            for i, n in enumerate(NAMES)]


@pytest.fixture
def resolved(spec_table: SpecTable) -> list[ResolvedSpec]:
    derived = ResolvedSpec(spec_table["h100_sxm"], SpecBasis.DERIVED, 0.8, 1.25,
                           "'NVIDIA Z1' matches no row: derived from compute capability 9.0")
    return [spec_table.resolve(NAMES[0]), spec_table.resolve(NAMES[1]), derived]


def busy(acc: Accountant, seconds: int) -> None:
    """Every GPU 90% busy at 1800 MHz, sampled every second (utilization only, as
    nvidia-smi gives it)."""
    n = acc.n_gpus
    gpu = np.tile(np.arange(n, dtype=np.int64), seconds)
    ts = np.repeat(np.arange(seconds, dtype=np.int64) * S, n)
    fields = {"sm_clock_mhz": np.full(gpu.shape, 1800.0),
              "gpu_util_pct": np.full(gpu.shape, 90.0),
              "power_mw": np.full(gpu.shape, 400_000.0)}
    acc.add_samples(gpu, ts, ts + T0, fields)


def test_every_busy_gpu_is_accounted_and_its_basis_recorded(
        resolved: list[ResolvedSpec]) -> None:
    assert resolved[0].basis == SpecBasis.TABLE
    assert resolved[1].basis != SpecBasis.TABLE
    acc = Accountant(devices(), resolved, EstimatorSettings(), T0, "nvml")
    busy(acc, 60)
    closed, still_open = acc.take_records()
    assert still_open == []
    acc.commit(closed)
    snap = acc.snapshot()
    for i, g in enumerate(snap.gpus):
        assert g.flop_high > 0, NAMES[i]
        assert g.flop_central > 0, NAMES[i]
        assert g.flop_low <= g.flop_central <= g.flop_high
        assert g.spec_basis == str(resolved[i].basis)
        assert g.spec_key == resolved[i].spec.key
        assert g.spec_reason == resolved[i].reason
    by_gpu = {r.gpu_uuid: r for r in closed}
    # A table row's records are as they always were; the others state their basis.
    assert not {"spec_basis", "spec_reason", "peak_factors"} & set(by_gpu["GPU-0"].assumptions)
    for i in (1, 2):
        a = by_gpu[f"GPU-{i}"].assumptions
        assert a["spec_basis"] == str(resolved[i].basis)
        assert a["spec_reason"] == resolved[i].reason != ""
        assert a["peak_factors"] == [resolved[i].low_factor, resolved[i].high_factor]
        assert a["spec"] == resolved[i].spec.key


def test_the_estimator_assumes_the_resolved_peak_factors(
        resolved: list[ResolvedSpec]) -> None:
    acc = Accountant(devices(), resolved, EstimatorSettings(), T0, "nvml")
    for a, r in zip(acc.assumptions, resolved, strict=True):
        assert a.spec is r.spec
        assert (a.peak_low_factor, a.peak_high_factor) == (r.low_factor, r.high_factor)
    assert acc.assumptions[2].peak_high_factor == 1.25


def test_a_gap_of_a_gpu_without_a_table_row_states_its_basis(
        resolved: list[ResolvedSpec]) -> None:
    acc = Accountant(devices(), resolved, EstimatorSettings(), T0, "nvml")
    acc.add_gap(1, T0 - 60 * S, T0, ["r1"])
    closed, _ = acc.take_records()
    (gap,) = [r for r in closed if r.kind == "gap"]
    assert gap.flop_high > 0  # never an unbounded zero
    assert gap.assumptions["spec_basis"] == str(resolved[1].basis)


def test_a_bare_table_row_is_a_table_basis(spec_table: SpecTable) -> None:
    acc = Accountant(devices()[:1], [spec_table["h100_sxm"]], EstimatorSettings(), T0, "nvml")
    assert acc.specs == (ResolvedSpec(spec_table["h100_sxm"], SpecBasis.TABLE),)
    assert acc.snapshot().gpus[0].spec_basis == "table"


def test_a_run_that_declares_its_recomputation_narrows_the_low_bound() -> None:
    """Low allows for full activation checkpointing (executed / 1.35) only while a run is
    silent about it; a run that says "none" keeps the counter and non-model allowances."""
    def low_share(env: dict[str, str]) -> tuple[float, float]:
        job = SimJob(env={"FLOPLEDGER_RUN_ID": "r", "FLOPLEDGER_PRECISION": "bf16", **env},
                     gpus=(0,))
        result = simulate(SCENARIOS["pretrain-bf16"], 300, n_gpus=1, jobs=(job,))
        return result.low / result.central, result.low / result.true_flop

    silent, silent_truth = low_share({})
    declared, declared_truth = low_share({"FLOPLEDGER_RECOMPUTE": "none"})
    settings = EstimatorSettings()
    assert silent < declared
    assert declared / silent == pytest.approx(
        settings.undeclared_recompute_max / (1 + settings.non_model_share_max), rel=0.02)
    assert silent_truth < declared_truth < 1.0
