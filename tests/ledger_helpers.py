"""Build small ledgers for tests."""

from __future__ import annotations

from pathlib import Path

from agent.accounting.records import LedgerRecord
from agent.ledger.signing import load_or_create_key
from agent.ledger.store import Ledger

SECOND = 1_000_000_000
T0 = 1_750_000_000 * SECOND


def record(gpu: int, start_s: float, end_s: float, run: str = "run-a", model: str = "m",
           central: int = 10**15, kind: str = "interval") -> LedgerRecord:
    return LedgerRecord(
        seq=-1, kind=kind, node="node-1", run=run, model=model, category="pre-training",
        gpu_uuid=f"GPU-{gpu:08d}", gpu_index=gpu, start_ns=T0 + round(start_s * SECOND),
        end_ns=T0 + round(end_s * SECOND), flop_low=central * 95 // 100, flop_central=central,
        flop_high=central * 105 // 100, energy_mj=700_000, samples=5,
        covered_ns=round((end_s - start_s) * SECOND), gap_ns=0, estimator="gpm_tensor",
        assumptions={"precision": "bf16", "split": "single"},
    )


def make_ledger(path: Path, checkpoints: int = 5, gpus: int = 2, runs: tuple[str, ...] = ("run-a",),
                close: bool = True) -> Ledger:
    key = load_or_create_key(path.parent / "node.key")
    ledger = Ledger(path, "node-1", key)
    t = 0.0
    for c in range(checkpoints):
        drafts = [record(g, t, t + 5, run=runs[(g + c) % len(runs)]) for g in range(gpus)]
        ledger.append(drafts, T0 + round((t + 5) * SECOND))
        t += 5
    if close:
        ledger.close()
    return ledger
