"""Integration-kernel throughput, side by side with the NumPy reference and a plain
streaming read (``numpy.sum``) of the same arrays, in one process."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from agent.accounting.integrate import integrate_flop, warm_up
from tests.reference import integrate_flop_reference


@dataclass(frozen=True)
class KernelResult:
    samples: int
    kernel_s: float
    reference_s: float
    streaming_s: float

    def rows(self) -> list[tuple[str, str]]:
        def rate(seconds: float) -> str:
            return f"{self.samples / seconds / 1e6:,.1f} M GPU-samples/s"

        return [
            ("samples (8 GPUs, grouped by GPU)", f"{self.samples:,}"),
            ("numba kernel", f"{self.kernel_s * 1e3:.1f} ms  {rate(self.kernel_s)}"),
            ("NumPy reference", f"{self.reference_s * 1e3:.1f} ms  {rate(self.reference_s)}"),
            ("streaming read (numpy sum)",
             f"{self.streaming_s * 1e3:.1f} ms  {rate(self.streaming_s)}"),
            ("kernel vs NumPy reference", f"{self.reference_s / self.kernel_s:.1f}x"),
            ("kernel vs streaming read", f"{self.streaming_s / self.kernel_s:.2f}x"),
        ]


def best_of(repeats: int, fn: Callable[[], object]) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def make_inputs(samples: int, n_gpus: int = 8, seed: int = 0) -> tuple[np.ndarray, ...]:
    """Samples of ``n_gpus`` GPUs at 10 Hz with jitter, grouped by GPU (the kernels'
    input layout): offsets, timestamps and three rate arrays."""
    rng = np.random.default_rng(seed)
    ticks = samples // n_gpus
    offsets = np.arange(n_gpus + 1, dtype=np.int64) * ticks
    base = np.arange(ticks, dtype=np.int64) * 100_000_000
    ts = np.concatenate([base + rng.integers(0, 1000, ticks) for _ in range(n_gpus)])
    central = rng.uniform(0, 1.2e15, ticks * n_gpus)
    return offsets, ts, central * 0.95, central, central * 1.05


def bench_kernel(samples: int = 8_000_000, repeats: int = 5) -> KernelResult:
    warm_up()
    offsets, ts, low, central, high = make_inputs(samples)
    n_gpus = 8
    gap_rate = np.full(n_gpus, 2.2e15)
    measured = np.ones(n_gpus, np.bool_)
    start = np.full(n_gpus, -1, np.int64)
    max_gap = 5_000_000_000
    args = (offsets, ts, low, central, high, gap_rate, measured, start, max_gap)
    got = integrate_flop(*args)
    want = integrate_flop_reference(*args)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_array_equal(a, b)
    kernel_s = best_of(repeats, lambda: integrate_flop(*args))
    reference_s = best_of(max(1, repeats // 2), lambda: integrate_flop_reference(*args))
    # The streaming read touches exactly the per-sample arrays the kernel reads.
    arrays = (ts, low, central, high)
    streaming_s = best_of(repeats, lambda: [a.sum() for a in arrays])
    return KernelResult(ts.shape[0], kernel_s, reference_s, streaming_s)
