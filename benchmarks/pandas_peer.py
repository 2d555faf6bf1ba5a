"""The peer `flopledger replay` is measured against: a plain pandas script that reads an
nvidia-smi log and integrates utilization-gated FLOP per GPU.

What a competent pandas user would write for the job, with pandas' fast C parser and
vectorised operations only (no Python loop over rows): ``read_csv`` of the CSV as
nvidia-smi writes it (``--format=csv``, units in the values: ``97 %``, ``1980 MHz``),
in chunks so that memory stays bounded; the unit columns read as categoricals, whose
few distinct texts (``97 %``) are turned into numbers once each, not once per row; the
timestamps parsed with their explicit format; then per GPU

    FLOP = util / 100 x (sm_clock / max_clock) x peak_flops x dt

with ``dt`` the time to the GPU's next sample (a rectangle per interval), summed. It
does less than the replay (no plausibility checks, no band, no gaps, no ledger), which
is what makes it the honest lower bound of a script doing the same arithmetic.

Run on its own: ``python -m benchmarks.pandas_peer LOG [--peak-tflops 989.4]``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pandas as pd
from pandas.api.types import union_categoricals

TIME = "timestamp"
UUID = "uuid"
UTIL = "utilization.gpu [%]"
CLOCK = "clocks.current.sm [MHz]"
MAX_CLOCK = "clocks.max.sm [MHz]"
# An H100 SXM's dense BF16 peak (989.4 TFLOP/s at its 1830 MHz boost clock); the peer
# applies one peak to every GPU, as a script for a homogeneous node would.
PEAK_FLOPS = 989.4e12
CHUNK_ROWS = 1_000_000


def _numbers(column: pd.Series, unit: str) -> npt.NDArray[np.float64]:
    """A categorical column of texts such as ``97 %`` as float64 values per row."""
    codes = column.cat.codes.to_numpy()
    values = pd.to_numeric(column.cat.categories.str.removesuffix(unit).str.strip())
    out: npt.NDArray[np.float64] = np.asarray(values, dtype=np.float64)[codes]
    return out


def integrate_log(path: Path, peak_flops: float = PEAK_FLOPS,
                  chunk_rows: int = CHUNK_ROWS) -> dict[str, float]:
    """FLOP per GPU UUID of an nvidia-smi CSV log (with units, any column order)."""
    gpus, times, rates = [], [], []
    reader = pd.read_csv(
        path, engine="c", skipinitialspace=True, usecols=[TIME, UUID, UTIL, CLOCK, MAX_CLOCK],
        dtype={UUID: "category", UTIL: "category", CLOCK: "category",
               MAX_CLOCK: "category"}, chunksize=chunk_rows)
    for chunk in reader:
        rate = (_numbers(chunk[UTIL], " %") / 100.0 * _numbers(chunk[CLOCK], " MHz")
                / _numbers(chunk[MAX_CLOCK], " MHz") * peak_flops)
        gpus.append(chunk[UUID].array)
        times.append(pd.to_datetime(chunk[TIME], format="%Y/%m/%d %H:%M:%S.%f")
                     .to_numpy().view(np.int64))
        rates.append(rate)
    df = pd.DataFrame({"gpu": union_categoricals(gpus), "t_ns": np.concatenate(times),
                       "flops": np.concatenate(rates)})
    df = df.sort_values(["gpu", "t_ns"], kind="stable")
    dt_s = -df.groupby("gpu", observed=True)["t_ns"].diff(-1) / 1e9
    flop = (df["flops"] * dt_s).groupby(df["gpu"], observed=True).sum()
    return {str(k): float(v) for k, v in flop.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("log", type=Path)
    parser.add_argument("--peak-tflops", type=float, default=PEAK_FLOPS / 1e12)
    args = parser.parse_args()
    start = time.perf_counter()
    flop = integrate_log(args.log, args.peak_tflops * 1e12)
    seconds = time.perf_counter() - start
    for gpu, value in sorted(flop.items()):
        print(f"{gpu}  {value:.4e} FLOP")
    size = args.log.stat().st_size
    print(f"{seconds:.2f} s, {size / seconds / 1e6:.0f} MB/s")


if __name__ == "__main__":
    main()
