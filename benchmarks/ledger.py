"""Ledger write cost per record and per checkpoint, and size per GPU-day."""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from agent.accounting.records import LedgerRecord
from agent.ledger.signing import load_or_create_key
from agent.ledger.store import Ledger

GPUS = 8
CHECKPOINT_S = 5.0
RECORD_S = 60.0


@dataclass(frozen=True)
class LedgerResult:
    checkpoints: int
    records: int
    checkpoint_ms: float
    sealing_checkpoint_ms: float
    per_record_us: float
    bytes_per_record: float

    def rows(self) -> list[tuple[str, str]]:
        per_day = 86400 / RECORD_S
        return [
            ("workload", f"{GPUS} GPUs for {self.checkpoints * CHECKPOINT_S / 3600:g} h: a "
                         f"checkpoint every {CHECKPOINT_S:g} s, records of {RECORD_S:g} s, "
                         "synchronous=FULL"),
            ("checkpoint", f"{self.checkpoint_ms:.2f} ms (replaces the {GPUS} open records)"),
            ("checkpoint that seals", f"{self.sealing_checkpoint_ms:.2f} ms ({GPUS} records "
                                      "appended, totals, signed tree head)"),
            ("per appended record", f"{self.per_record_us:.0f} us"),
            ("size", f"{self.bytes_per_record:.0f} bytes/record; {per_day:.0f} records per "
                     f"GPU-day = {self.bytes_per_record * per_day / 2**20:.2f} MiB per GPU-day "
                     "(independent of the sampling interval)"),
        ]


def _record(gpu: int, start_ns: int, end_ns: int) -> LedgerRecord:
    return LedgerRecord(
        seq=-1, kind="interval", node="bench-node-001", run="llama-70b-pretrain-2026-11",
        model="llama-70b", category="pre-training",
        gpu_uuid=f"GPU-5f1c{gpu:04x}-1a2b-3c4d-5e6f-0123456789ab", gpu_index=gpu,
        start_ns=start_ns, end_ns=end_ns, flop_low=4_912_345_000_000_000,
        flop_central=5_123_456_000_000_000, flop_high=5_398_765_000_000_000, energy_mj=3_456_789,
        samples=5, covered_ns=end_ns - start_ns, gap_ns=0, estimator="gpm_tensor",
        assumptions={"spec": "h100_sxm", "precision": "bf16", "undeclared_precisions": None,
                     "recompute_factor": 1.0, "split": "single", "share": 1.0,
                     "estimators": {"gpm_tensor": 5}, "tensor_activity_uncertainty": 0.02,
                     "max_gap_s": 5.0, "via": "env"},
    )


def bench_ledger(hours: float = 1.0) -> LedgerResult:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "ledger.sqlite"
        ledger = Ledger(path, "bench-node-001", load_or_create_key(Path(tmp) / "node.key"))
        t0 = 1_764_000_000 * 10**9
        step = round(CHECKPOINT_S * 1e9)
        per_record = round(RECORD_S / CHECKPOINT_S)
        checkpoints = round(hours * 3600 / CHECKPOINT_S)
        plain: list[float] = []
        sealing: list[float] = []
        window_start = t0
        for c in range(1, checkpoints + 1):
            now = t0 + c * step
            current = [_record(g, window_start, now) for g in range(GPUS)]
            seal = c % per_record == 0
            start = time.perf_counter()
            if seal:
                ledger.append(current, now, still_open=[])
            else:
                ledger.append([], now, still_open=current)
            (sealing if seal else plain).append(time.perf_counter() - start)
            if seal:
                window_start = now
        ledger.close()
        size = sum(p.stat().st_size for p in Path(tmp).glob("ledger.sqlite*"))
        records = len(sealing) * GPUS
    return LedgerResult(checkpoints, records, sum(plain) / len(plain) * 1e3,
                        sum(sealing) / len(sealing) * 1e3,
                        sum(sealing) / records * 1e6, size / records)
