"""NumPy references of the integration kernels, written independently of them.

Vectorised per GPU (sort-free: samples of one GPU are taken in their given order), so
they share no loop structure with the numba kernels they check.
"""

from __future__ import annotations

import numpy as np

from agent.integrate import RATE_NS_PER_UNIT, EnergyTotals, FlopTotals
from agent.sources.base import BoolArray, FloatArray, IntArray


def integrate_flop_reference(
    gpu: IntArray,
    timestamp_ns: IntArray,
    rate_low: FloatArray,
    rate_central: FloatArray,
    rate_high: FloatArray,
    gap_rate_flops: FloatArray,
    measured_over_gaps: BoolArray,
    last_timestamp_ns: IntArray,
    max_gap_ns: int,
) -> FlopTotals:
    n_gpus = last_timestamp_ns.shape[0]
    out = {k: np.zeros(n_gpus, np.int64) for k in
           ("low", "central", "high", "covered", "gap", "intervals", "rejected")}
    last = last_timestamp_ns.copy()
    for g in range(n_gpus):
        idx = np.flatnonzero(gpu == g)
        if idx.size == 0:
            continue
        t = timestamp_ns[idx]
        # Drop samples whose time does not exceed the running maximum (incl. carried state).
        start = last[g]
        running = np.maximum.accumulate(np.concatenate(([start], t)))
        keep = t > running[:-1]
        if start < 0 and t.size:
            keep[0] = True
        out["rejected"][g] = int((~keep).sum())
        idx, t = idx[keep], t[keep]
        if t.size == 0:
            continue
        prev = np.concatenate(([start], t[:-1]))
        valid = prev >= 0
        dt = (t - prev)[valid]
        i = idx[valid]
        last[g] = t[-1]
        is_gap = dt > max_gap_ns
        ok = ~is_gap
        x = lambda rate: rate[i] * dt / RATE_NS_PER_UNIT  # noqa: E731
        out["intervals"][g] = dt.size
        out["covered"][g] = dt[ok].sum()
        out["gap"][g] = dt[is_gap].sum()
        out["low"][g] = np.floor(x(rate_low)[ok]).astype(np.int64).sum()
        central = np.rint(x(rate_central)).astype(np.int64)
        out["central"][g] = central[ok].sum() + (central[is_gap].sum() if measured_over_gaps[g] else 0)
        gap_units = np.ceil(gap_rate_flops[g] * dt[is_gap] / RATE_NS_PER_UNIT).astype(np.int64)
        out["high"][g] = np.ceil(x(rate_high)[ok]).astype(np.int64).sum() + gap_units.sum()
    return FlopTotals(out["low"], out["central"], out["high"], out["covered"], out["gap"],
                      out["intervals"], out["rejected"], last)


def integrate_energy_reference(
    gpu: IntArray,
    timestamp_ns: IntArray,
    energy_mj: FloatArray,
    power_mw: FloatArray,
    last_timestamp_ns: IntArray,
    last_energy_mj: FloatArray,
) -> EnergyTotals:
    n_gpus = last_timestamp_ns.shape[0]
    total = np.zeros(n_gpus, np.int64)
    resets = np.zeros(n_gpus, np.int64)
    last_t = last_timestamp_ns.copy()
    last_e = last_energy_mj.copy()
    for g in range(n_gpus):
        idx = np.flatnonzero(gpu == g)
        for i in idx:
            t, e = timestamp_ns[i], energy_mj[i]
            if last_t[g] >= 0 and t <= last_t[g]:
                continue
            if not np.isnan(e) and not np.isnan(last_e[g]):
                delta = e - last_e[g]
                if delta < 0:
                    resets[g] += 1
                    delta = e
                total[g] += int(delta)
            elif np.isnan(last_e[g]) and last_t[g] >= 0 and not np.isnan(power_mw[i]):
                total[g] += int(np.rint(power_mw[i] * (t - last_t[g]) * 1e-9))
            if not np.isnan(e):
                last_e[g] = e
            last_t[g] = t
    return EnergyTotals(total, resets, last_t, last_e)
