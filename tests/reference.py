"""NumPy references of the integration kernels, written independently of them.

Vectorised per GPU segment with NumPy temporaries, so they share no loop structure
with the numba kernels they check.
"""

from __future__ import annotations

import numpy as np

from agent.integrate import NS_TO_UNITS, EnergyTotals, FlopTotals
from agent.sources.base import BoolArray, FloatArray, IntArray


def integrate_flop_reference(
    offsets: IntArray,
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
           ("low", "central", "high", "covered", "gap", "rejected")}
    last = last_timestamp_ns.copy()
    for g in range(n_gpus):
        idx = np.arange(offsets[g], offsets[g + 1])
        if idx.size == 0:
            continue
        t = timestamp_ns[idx]
        start = last[g]
        if start < 0:
            start, idx, t = t[0], idx[1:], t[1:]
        # A sample counts only if it is later than every sample before it.
        running = np.maximum.accumulate(np.concatenate(([start], t)))
        keep = t > running[:-1]
        out["rejected"][g] = int((~keep).sum())
        idx, t = idx[keep], t[keep]
        prev = np.concatenate(([start], t[:-1]))
        dt = t - prev
        last[g] = t[-1] if t.size else start
        is_gap = dt > max_gap_ns
        ok = ~is_gap
        dtf = dt * NS_TO_UNITS
        out["covered"][g] = dt[ok].sum()
        out["gap"][g] = dt[is_gap].sum()
        out["low"][g] = np.floor(rate_low[idx][ok] * dtf[ok]).astype(np.int64).sum()
        central = np.rint(rate_central[idx] * dtf).astype(np.int64)
        out["central"][g] = central[ok].sum() + (
            central[is_gap].sum() if measured_over_gaps[g] else 0
        )
        out["high"][g] = (
            np.ceil(rate_high[idx][ok] * dtf[ok]).astype(np.int64).sum()
            + np.ceil(gap_rate_flops[g] * dtf[is_gap]).astype(np.int64).sum()
        )
    return FlopTotals(out["low"], out["central"], out["high"], out["covered"], out["gap"],
                      out["rejected"], last)


def integrate_energy_reference(
    offsets: IntArray,
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
        for i in range(offsets[g], offsets[g + 1]):
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
