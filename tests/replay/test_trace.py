"""Traces: a simulated run recorded and replayed gives the live totals bit for bit; a
damaged trace loses exactly its damaged blocks, never a row more, never a wrong one."""

from __future__ import annotations

import json
import tempfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.accounting.accountant import Accountant
from agent.accounting.estimate import EstimatorSettings
from agent.accounting.runs import GpuAttribution
from agent.ledger.signing import load_or_create_key
from agent.ledger.store import Ledger
from agent.ledger.verify import verify_ledger
from agent.replay.engine import ReplayEngine, ReplayOptions
from agent.replay.readers.base import ColumnChunk, ReplayError
from agent.replay.readers.trace import _FRAME, MAGIC, TraceReader, TraceWriter
from agent.simrun import record_trace
from agent.sources.base import FLOAT_FIELDS, ActivityKind, DeviceInfo, SampleBatch
from agent.sources.clock import VirtualClock
from agent.sources.scenarios import SCENARIOS, SimJob
from agent.sources.simulated import SimulatedSource
from agent.sources.specs import load_spec_table

SPECS = load_spec_table()
JOBS = (
    SimJob(env={"FLOPLEDGER_RUN_ID": "run-a", "FLOPLEDGER_MODEL": "m1",
                "FLOPLEDGER_CATEGORY": "pre-training", "FLOPLEDGER_PRECISION": "bf16"},
           gpus=(0, 1), end_s=120.0),
    SimJob(env={"FLOPLEDGER_RUN_ID": "run-b", "FLOPLEDGER_MODEL": "m2",
                "FLOPLEDGER_CATEGORY": "fine-tuning"}, gpus=(0, 1), start_s=120.0),
    SimJob(env={"SLURM_JOB_ID": "77"}, gpus=(2,)),
)


def record(path: Path, seconds: float = 300, block_rows: int = 256,
           scenario: str = "pretrain-bf16") -> tuple[Accountant, list[SampleBatch]]:
    """Record a trace and, from the very same batches, account them live."""
    acc: Accountant | None = None
    batches: list[SampleBatch] = []
    ticks = 0

    def live(batch: SampleBatch, attributions: list[GpuAttribution]) -> None:
        nonlocal acc, ticks
        if acc is None:
            acc = Accountant(recording_devices, [SPECS["h100_sxm"]] * 4, EstimatorSettings(), 0,
                             "simulated", node="live")
        acc.add_batch(batch, attributions)
        ticks += 1
        if acc.buffered >= 5:
            acc.integrate()
        if ticks % 10 == 0:
            closed, still_open = acc.take_records(batch.wall_time_ns, 60 * 10**9)
            acc.commit(closed, still_open)
        batches.append(batch)

    recording_devices = _devices()
    rec = record_trace(path, SCENARIOS[scenario], seconds, n_gpus=4, jobs=JOBS,
                       on_batch=live, block_rows=block_rows)
    assert rec.devices == recording_devices
    assert acc is not None
    acc.integrate()
    closed, _ = acc.take_records()
    acc.commit(closed)
    return acc, batches


def _devices() -> tuple[DeviceInfo, ...]:
    return tuple(SimulatedSource(SPECS, "h100_sxm", 4, SCENARIOS["pretrain-bf16"],
                                 clock=VirtualClock(), jobs=JOBS).devices())


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory
             ) -> tuple[Path, Accountant, list[SampleBatch]]:
    path = tmp_path_factory.mktemp("trace") / "sim.trace"
    acc, batches = record(path)
    return path, acc, batches


def test_replayed_trace_equals_live_accounting_bit_for_bit(
        recorded: tuple[Path, Accountant, list[SampleBatch]], tmp_path: Path) -> None:
    path, live, _ = recorded
    summary = ReplayEngine(tmp_path / "r.sqlite", ReplayOptions(record_s=60)).run([path])
    assert summary.bad_count == 0
    assert not summary.errors
    ledger = Ledger(tmp_path / "r.sqlite", "replay",
                    load_or_create_key(tmp_path / "r.sqlite.key"))
    got = ledger.totals["gpu"]
    assert set(got) == set(live.gpu_totals)
    for uuid, want in live.gpu_totals.items():
        g = got[uuid]
        assert (g.flop, g.energy_mj, g.samples, g.covered_ns, g.gap_ns) == (
            want.flop, want.energy_mj, want.samples, want.covered_ns, want.gap_ns)
    runs = ledger.totals["run"]
    for run in ("run-a", "run-b", "slurm-77", "unattributed"):
        assert runs[run].flop == live.run_totals[run].flop
    assert ledger.runs()["run-b"].category == "fine-tuning"
    ledger.close()
    assert verify_ledger(tmp_path / "r.sqlite").problems == []


def test_the_band_contains_the_simulators_truth(
        recorded: tuple[Path, Accountant, list[SampleBatch]], tmp_path: Path) -> None:
    path, _, batches = recorded
    truth = float(batches[-1].sim_true_flop_total.sum())  # type: ignore[union-attr]
    total = ReplayEngine(tmp_path / "t.sqlite", ReplayOptions()).run([path]).total
    assert total.flop.low <= truth <= total.flop.high
    assert abs(total.flop.central / truth - 1) < 0.05


def test_trace_columns_round_trip(recorded: tuple[Path, Accountant, list[SampleBatch]]) -> None:
    path, _, batches = recorded
    reader = TraceReader(path)
    chunks = list(reader.chunks())
    assert reader.source == "simulated"
    assert reader.meta["gpu_model"] == "h100_sxm"
    assert sum(c.rows for c in chunks) == 4 * len(batches)
    for name in FLOAT_FIELDS:
        want = np.concatenate([getattr(b, name) for b in batches])
        np.testing.assert_array_equal(np.concatenate([c.fields[name] for c in chunks]), want)
    np.testing.assert_array_equal(np.concatenate([c.timestamp_ns for c in chunks]),
                                  np.concatenate([b.timestamp_ns for b in batches]))
    got_truth = [c.sim_true_flop for c in chunks if c.sim_true_flop is not None]
    want_truth = [b.sim_true_flop_total for b in batches if b.sim_true_flop_total is not None]
    assert len(got_truth) == len(chunks)
    np.testing.assert_array_equal(np.concatenate(got_truth), np.concatenate(want_truth))
    runs = {c.attribution_table[i].shares[0].run.run_id
            for c in chunks for i in set(c.attribution.tolist())}  # type: ignore[union-attr]
    assert {"run-a", "run-b", "slurm-77", "unattributed"} <= runs


def test_not_a_trace_and_damaged_header_are_clear_errors(tmp_path: Path) -> None:
    (tmp_path / "x").write_bytes(b"hello")
    with pytest.raises(ReplayError, match="magic"):
        list(TraceReader(tmp_path / "x").chunks())
    good = tmp_path / "g.trace"
    record(good, seconds=5)
    data = bytearray(good.read_bytes())
    data[30] ^= 0xFF
    (tmp_path / "h.trace").write_bytes(bytes(data))
    with pytest.raises(ReplayError, match="header"):
        list(TraceReader(tmp_path / "h.trace").chunks())


def test_an_unclosed_trace_keeps_its_blocks(tmp_path: Path) -> None:
    path = tmp_path / "open.trace"
    writer = TraceWriter(path, _devices(), "simulated", block_rows=8)
    _, batches = record(tmp_path / "src.trace", seconds=20)
    for b in batches:
        writer.write(b)
    writer.flush()
    writer._f.close()  # the process died before close(): no trailer
    chunks = list(TraceReader(path).chunks())
    assert sum(c.rows for c in chunks) == 4 * len(batches)
    assert [b.reason for c in chunks for b in c.bad][-1].startswith("no end marker")


def blocks(chunks: list[ColumnChunk]) -> list[tuple[bytes, ...]]:
    return [tuple(a.tobytes() for a in (c.gpu, c.timestamp_ns, c.wall_ns,
                                        *(c.fields[n] for n in FLOAT_FIELDS)))
            for c in chunks if c.rows]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.integers(0, 10**7), st.integers(0, 255)), min_size=1, max_size=4),
       st.integers(0, 10**7))
def test_fuzz_damage_loses_whole_blocks_only(
        recorded: tuple[Path, Accountant, list[SampleBatch]], flips: list[tuple[int, int]],
        cut: int) -> None:
    path, _, _ = recorded
    clean = blocks(list(TraceReader(path).chunks()))
    data = bytearray(path.read_bytes())
    for at, value in flips:
        data[64 + at % (len(data) - 64)] = value
    data = data[: max(64, len(data) - cut % 2000)]
    with tempfile.TemporaryDirectory() as tmp:
        damaged = Path(tmp) / "d.trace"
        damaged.write_bytes(bytes(data))
        try:
            survived = blocks(list(TraceReader(damaged).chunks()))
        except ReplayError:
            return
    # Every surviving block is one of the clean ones, whole and in order.
    it = iter(clean)
    assert all(any(b == c for c in it) for b in survived)


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=400))
def test_fuzz_arbitrary_bytes(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "f.trace"
        path.write_bytes(b"FLOPTRC1" + data)
        chunks: list[ColumnChunk] = []
        message = ""
        try:
            chunks = list(TraceReader(path).chunks())
        except ReplayError as e:
            message = str(e)
        assert not message or str(path) in message
        for c in chunks:
            assert c.gpu.shape == c.timestamp_ns.shape


# -- what the driver said of each GPU ---------------------------------------------------

FACT_DEVICES = (
    DeviceInfo(index=0, uuid="GPU-aaaaaaaa-0000-4000-8000-000000000000",
               name="NVIDIA H100 80GB HBM3", spec_key="h100_sxm", max_sm_clock_mhz=1980.0,
               activity_kind=ActivityKind.NONE, source="nvml", pci_device_id=0x2330,
               compute_capability="9.0", sm_count=132),
    DeviceInfo(index=1, uuid="GPU-bbbbbbbb-0000-4000-8000-000000000000", name="NVIDIA X999",
               spec_key=None, max_sm_clock_mhz=2000.0, activity_kind=ActivityKind.NONE,
               source="nvml", pci_device_id=0x9999, compute_capability="13.0", sm_count=200,
               mig_parent_uuid=None),
)
T_WALL = 1_748_779_200 * 10**9  # 2025-06-01 12:00:00 UTC


def fact_trace(path: Path, seconds: int = 30) -> None:
    """Both GPUs busy (90%, utilization only) for ``seconds``."""
    writer = TraceWriter(path, FACT_DEVICES, "nvml", block_rows=16)
    for t in range(seconds):
        batch = SampleBatch.empty(2, t * 10**9, T_WALL + t * 10**9)
        batch.gpu_util_pct[:] = 90.0
        batch.sm_clock_mhz[:] = (1900.0, 1950.0)
        batch.power_mw[:] = 400_000.0
        writer.write(batch)
    writer.close()


def rewrite_header(path: Path, edit: Callable[[dict[str, Any]], None]) -> None:
    """The trace with its header JSON edited (and its checksum made right again)."""
    data = path.read_bytes()
    start = len(MAGIC)
    tag, size, _ = _FRAME.unpack_from(data, start)
    body = start + _FRAME.size
    doc = json.loads(data[body:body + size])
    edit(doc)
    new = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    path.write_bytes(data[:start] + _FRAME.pack(tag, len(new), zlib.crc32(new)) + new
                     + data[body + size:])


def test_the_drivers_facts_round_trip_and_reach_the_spec_resolution(tmp_path: Path) -> None:
    path = tmp_path / "facts.trace"
    fact_trace(path)
    reader = TraceReader(path)
    keys = next(iter(reader.chunks())).gpus
    assert reader.devices == FACT_DEVICES
    assert [(k.pci_device_id, k.compute_capability, k.sm_count) for k in keys] == [
        (0x2330, "9.0", 132), (0x9999, "13.0", 200)]
    summary = ReplayEngine(tmp_path / "f.sqlite", ReplayOptions()).run([path])
    h100, unknown = (summary.gpus[d.uuid] for d in FACT_DEVICES)
    assert (h100.spec, h100.basis) == ("h100_sxm", "table")
    assert unknown.basis in ("derived", "ceiling")
    assert unknown.reason
    assert unknown.totals.flop.high > 0
    assert unknown.totals.flop.central > 0


def test_a_trace_without_the_drivers_facts_is_still_read(tmp_path: Path) -> None:
    path = tmp_path / "old.trace"
    fact_trace(path)

    def drop_facts(doc: dict[str, Any]) -> None:
        for d in doc["devices"]:
            for name in ("pci_device_id", "compute_capability", "sm_count", "mig_parent_uuid"):
                del d[name]

    rewrite_header(path, drop_facts)
    reader = TraceReader(path)
    assert sum(c.rows for c in reader.chunks()) == 60
    assert [(d.pci_device_id, d.compute_capability, d.sm_count) for d in reader.devices] == [
        (None, None, None)] * 2
    assert [d.name for d in reader.devices] == [d.name for d in FACT_DEVICES]


def test_a_bad_fact_in_a_trace_header_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.trace"
    fact_trace(path, seconds=2)

    def bad_sm_count(doc: dict[str, Any]) -> None:
        doc["devices"][1]["sm_count"] = "many"

    rewrite_header(path, bad_sm_count)
    with pytest.raises(ReplayError, match="unreadable trace header: bad sm_count 'many' in "
                                          "device entry 1"):
        list(TraceReader(path).chunks())
