"""The one sampling loop: pacing, stop conditions, checkpoints (and their failures),
hooks and the final flush, on virtual clocks (no test here waits or reads real time)."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from agent.accounting.accountant import Accountant
from agent.accounting.attribution import AttributionSettings, Attributor
from agent.accounting.estimate import EstimatorSettings
from agent.accounting.records import LedgerRecord, Totals
from agent.accounting.runs import GpuAttribution
from agent.ledger.signing import load_or_create_key
from agent.ledger.store import Ledger
from agent.ledger.verify import verify_ledger
from agent.sampler import Sampler, StopCondition, after_s, beyond_s
from agent.sources.base import ActivityKind, DeviceInfo, SampleBatch, SourceError
from agent.sources.clock import RealClock, VirtualClock
from agent.sources.scenarios import SCENARIOS, SimJob
from agent.sources.simulated import SimulatedSource
from agent.sources.specs import SpecTable

S = 10**9
JOBS = (
    SimJob(env={"FLOPLEDGER_RUN_ID": "run-a", "FLOPLEDGER_MODEL": "m1"}, gpus=(0,), end_s=40.0),
    SimJob(env={"FLOPLEDGER_RUN_ID": "run-b", "FLOPLEDGER_MODEL": "m2"}, gpus=(0, 1),
           start_s=40.0),
)


def virtual_clock() -> VirtualClock:
    return VirtualClock(start_monotonic_ns=S, start_wall_ns=1_700_000_000 * S)


@dataclass
class Agent:
    """A sampler wired as the daemon wires it, on a virtual clock, with a real ledger."""

    sampler: Sampler
    ledger: Ledger
    committed: list[LedgerRecord] = field(default_factory=list)

    @property
    def accountant(self) -> Accountant:
        assert self.sampler.accountant is not None
        return self.sampler.accountant


def agent(tmp_path: Path, specs: SpecTable, name: str, *, until: StopCondition | None,
          hooks: Sequence[Callable[[SampleBatch, list[GpuAttribution] | None], None]] = (),
          source: Any = None, clock: VirtualClock | None = None) -> Agent:
    clock = clock or virtual_clock()
    source = source or SimulatedSource(specs, "h100_sxm", 2, SCENARIOS["pretrain-bf16"],
                                       clock=clock, jobs=JOBS)
    devices = source.devices()
    accountant = Accountant(devices, [specs["h100_sxm"]] * len(devices), EstimatorSettings(),
                            clock.wall_ns(), "simulated", node="n")
    ledger = Ledger(tmp_path / f"{name}.sqlite", "n", load_or_create_key(tmp_path / f"{name}.key"))
    committed: list[LedgerRecord] = []
    sampler = Sampler(source, accountant, clock, 1.0, 5,
                      attributor=Attributor(AttributionSettings(), source.process_inspector(),
                                            clock_ns=clock.monotonic_ns),
                      ledger=ledger, checkpoint_s=5.0, record_s=20.0, until=until,
                      hooks=hooks, on_commit=committed.extend)
    return Agent(sampler, ledger, committed)


def fail_appends(monkeypatch: pytest.MonkeyPatch, ledger: Ledger, calls: set[int]) -> list[int]:
    """Make the ledger's append calls numbered ``calls`` (from 1) fail as a full disk
    does; returns the list of call numbers made so far."""
    real = ledger.append
    made: list[int] = []

    def append(*args: Any, **kwargs: Any) -> Any:
        made.append(len(made) + 1)
        if made[-1] in calls:
            raise sqlite3.OperationalError("database or disk is full")
        return real(*args, **kwargs)

    monkeypatch.setattr(ledger, "append", append)
    return made


def fields(t: Totals) -> tuple[int, ...]:
    return (t.flop_low, t.flop_central, t.flop_high, t.energy_mj, t.samples, t.covered_ns,
            t.gap_ns, t.first_ns, t.last_ns)


def ledger_totals(ledger: Ledger) -> dict[str, dict[str, tuple[int, ...]]]:
    return {scope: {k: fields(t) for k, t in v.items()} for scope, v in ledger.totals.items()}


def key(r: LedgerRecord) -> tuple[object, ...]:
    return (r.gpu_uuid, r.run, r.start_ns, r.end_ns, r.flop_low, r.flop_central, r.flop_high,
            r.samples)


def test_a_failed_checkpoint_keeps_its_records_for_the_next_one(
        tmp_path: Path, spec_table: SpecTable, monkeypatch: pytest.MonkeyPatch) -> None:
    clean = agent(tmp_path, spec_table, "clean", until=after_s(90))
    clean.sampler.sample()
    failing = agent(tmp_path, spec_table, "failing", until=after_s(90))
    # Checkpoints at 5 s, 10 s, ...: the 20 s one closes records; fail it and the next.
    made = fail_appends(monkeypatch, failing.ledger, {4, 5})
    stored: dict[int, int] = {}  # append calls made -> samples in the ledger's totals

    def watch(batch: SampleBatch, _a: list[GpuAttribution] | None) -> None:
        stored[len(made)] = sum(t.samples for t in failing.ledger.totals["gpu"].values())

    failing.sampler.hooks = (watch,)
    failing.sampler.sample()

    assert failing.sampler.checkpoint_failures == 2
    assert failing.sampler.checkpoints == clean.sampler.checkpoints - 2
    # While the disk was "full" nothing reached the ledger; the next checkpoint stored
    # the records both failed ones had closed...
    assert stored[3] == stored[4] == stored[5] == 0 < stored[6]
    # ...and nothing was lost: the next checkpoint stored what the failed ones held.
    assert ledger_totals(failing.ledger) == ledger_totals(clean.ledger)
    assert [key(r) for r in failing.ledger.records()] == [key(r) for r in clean.ledger.records()]
    assert [key(r) for r in failing.committed] == [key(r) for r in failing.ledger.records()]
    assert {u: fields(t) for u, t in failing.accountant.gpu_totals.items()} == ledger_totals(
        failing.ledger)["gpu"]
    assert failing.ledger.open_records() == []
    for a in (clean, failing):
        a.ledger.close()
    assert verify_ledger(tmp_path / "failing.sqlite").problems == []


def test_a_failed_final_checkpoint_is_reported_and_does_not_raise(
        tmp_path: Path, spec_table: SpecTable, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    a = agent(tmp_path, spec_table, "final", until=after_s(12))
    made = fail_appends(monkeypatch, a.ledger, {3})  # 5 s, 10 s, then the final one
    with caplog.at_level(logging.ERROR, logger="agent.sampler"):
        a.sampler.sample()
    assert made == [1, 2, 3]
    assert a.sampler.checkpoint_failures == 1
    assert "final checkpoint failed" in caplog.text
    # What the 10 s checkpoint stored stays, open (the next start seals it); the
    # ticks after it are not in the ledger.
    assert a.ledger.totals["gpu"] == {}
    kept = a.ledger.open_records()
    assert kept
    assert sum(r.samples for r in kept) < a.sampler.ticks * 2
    a.ledger.close()


def test_stopping_flushes_everything_into_the_ledger(tmp_path: Path,
                                                     spec_table: SpecTable) -> None:
    by_event = agent(tmp_path, spec_table, "event", until=None)

    def stop_at_23(batch: SampleBatch, _a: list[GpuAttribution] | None) -> None:
        if by_event.sampler.ticks == 22:  # this is the 23rd tick
            by_event.sampler.stop_event.set()

    by_event.sampler.hooks = (stop_at_23,)
    by_event.sampler.sample()
    by_time = agent(tmp_path, spec_table, "time", until=after_s(23))
    by_time.sampler.sample()

    for a in (by_event, by_time):
        assert a.sampler.ticks == 23
        assert a.sampler.stop_event.is_set()
        # 23 s is neither a checkpoint (every 5 s) nor a record boundary (20 s): only
        # the final flush can have stored the last ticks, and it closed every record.
        assert a.ledger.open_records() == []
        assert {u: t.samples for u, t in a.ledger.totals["gpu"].items()} == {
            d.uuid: 23 for d in a.accountant.devices}
        snap = a.sampler.snapshot
        assert snap.ticks == 23
        assert {g.uuid: g.flop_central for g in snap.gpus} == {
            u: float(t.flop_central) for u, t in a.ledger.totals["gpu"].items()}
    assert ledger_totals(by_event.ledger) == ledger_totals(by_time.ledger)


def test_a_source_failure_is_kept_after_a_final_flush(tmp_path: Path,
                                                      spec_table: SpecTable) -> None:
    clock = virtual_clock()
    sim = SimulatedSource(spec_table, "h100_sxm", 2, SCENARIOS["pretrain-bf16"], clock=clock)

    class Breaking:
        kind = "simulated"
        devices = sim.devices
        process_inspector = sim.process_inspector
        close = sim.close

        def read(self) -> SampleBatch:
            if clock.monotonic_ns() >= 8 * S:
                raise SourceError("driver gone")
            return sim.read()

    a = agent(tmp_path, spec_table, "broken", until=None, source=Breaking(), clock=clock)
    a.sampler.run()
    assert isinstance(a.sampler.failure, SourceError)
    assert a.sampler.stop_event.is_set()
    assert {t.samples for t in a.ledger.totals["gpu"].values()} == {7}
    with pytest.raises(SourceError):
        agent(tmp_path, spec_table, "broken2", until=None, source=Breaking(),
              clock=clock).sampler.sample()
    a.ledger.close()


def test_restarting_on_a_ledger_charges_the_unseen_time_as_a_gap(
        tmp_path: Path, spec_table: SpecTable) -> None:
    first = agent(tmp_path, spec_table, "node", until=after_s(10))
    first.sampler.sample()
    before = {u: t.gap_ns for u, t in first.ledger.totals["gpu"].items()}
    first.ledger.close()
    later = VirtualClock(start_monotonic_ns=S, start_wall_ns=1_700_000_100 * S)
    second = agent(tmp_path, spec_table, "node", until=after_s(10), clock=later)
    second.sampler.sample()
    after = second.ledger.totals["gpu"]
    assert set(after) == set(before)
    for uuid, t in after.items():
        # Samples at 0..9 s, then from 100 s: the 91 s between were seen by nobody.
        assert t.gap_ns - before[uuid] == 91 * S
        assert t.samples == 20
    second.ledger.close()


class StubSource:
    """One GPU whose reads take ``stalls[n]`` ns of virtual time on the n-th read."""

    kind = "stub"

    def __init__(self, clock: VirtualClock, stalls: dict[int, int] | None = None) -> None:
        self.clock = clock
        self.stalls = stalls or {}
        self.reads: list[int] = []

    def devices(self) -> list[DeviceInfo]:
        return [DeviceInfo(index=0, uuid="GPU-stub", name="stub", spec_key=None,
                           max_sm_clock_mhz=None, activity_kind=ActivityKind.NONE,
                           source="stub")]

    def read(self) -> SampleBatch:
        self.reads.append((self.clock.monotonic_ns() - S) // 10**6)
        self.clock.advance_ns(self.stalls.get(len(self.reads), 0))
        return SampleBatch.empty(1, self.clock.monotonic_ns(), self.clock.wall_ns())

    def close(self) -> None:
        pass


@pytest.mark.parametrize(("step", "reads_ms", "overruns"), [
    # Sleeping to deadlines: the ticks a stall swallowed are skipped and counted.
    (False, [0, 1000, 2000, 5000, 6000, 7000], 2),
    # Stepping a virtual clock: a stall delays every later tick instead.
    (True, [0, 1000, 2000, 5500, 6500, 7500], 0),
])
def test_pacing(step: bool, reads_ms: list[int], overruns: int) -> None:
    clock = virtual_clock()
    source = StubSource(clock, {3: 2_500 * 10**6})
    sampler = Sampler(source, None, clock, 1.0, step=step, until=beyond_s(7.5))
    sampler.sample()
    assert source.reads == reads_ms
    assert sampler.stats.overruns == overruns


@pytest.mark.parametrize(("until", "ticks"), [
    (after_s(3), 3),  # the agent's exit_after_s: a tick at exactly 3 s is not taken
    (beyond_s(3), 4),  # a simulation: both ends of its span are sampled
    (beyond_s(0), 1),
])
def test_stop_conditions(until: StopCondition, ticks: int) -> None:
    clock = virtual_clock()
    source = StubSource(clock)
    sampler = Sampler(source, None, clock, 1.0, step=True, until=until)
    sampler.sample()
    assert sampler.ticks == len(source.reads) == ticks


def test_no_exit_after_means_no_stop_condition() -> None:
    assert after_s(None) is None
    assert after_s(0) is None


def test_stepping_needs_a_virtual_clock() -> None:
    clock = virtual_clock()
    with pytest.raises(ValueError, match="VirtualClock"):
        Sampler(StubSource(clock), None, RealClock(), 1.0, step=True)


def test_hooks_see_each_batch_and_its_attributions_before_the_accountant(
        spec_table: SpecTable) -> None:
    clock = virtual_clock()
    source = SimulatedSource(spec_table, "h100_sxm", 2, SCENARIOS["pretrain-bf16"],
                             clock=clock, jobs=JOBS)
    accountant = Accountant(source.devices(), [spec_table["h100_sxm"]] * 2,
                            EstimatorSettings(), clock.wall_ns(), "simulated")
    seen: list[tuple[int, tuple[str, ...], int]] = []

    def hook(batch: SampleBatch, attributions: list[GpuAttribution] | None) -> None:
        assert attributions is not None
        runs = tuple(a.shares[0].run.run_id for a in attributions)
        seen.append((batch.wall_time_ns, runs, accountant.ticks))

    sampler = Sampler(source, accountant, clock, 10.0, 1, step=True, until=beyond_s(60),
                      attributor=Attributor(AttributionSettings(), source.process_inspector(),
                                            clock_ns=clock.monotonic_ns), hooks=(hook,))
    sampler.sample()
    assert [ticks for _, _, ticks in seen] == list(range(7))
    assert seen[0][1] == ("run-a", "unattributed")
    assert seen[-1][1] == ("run-b", "run-b")


@pytest.mark.parametrize(("kwargs", "checkpoints"), [
    # Every 5 s on the clock, counted from the first tick; then the final one.
    ({"checkpoint_s": 5.0}, 4),
    ({"checkpoint_ticks": 7}, 3),
])
def test_checkpoint_cadence(spec_table: SpecTable, kwargs: dict[str, Any],
                            checkpoints: int) -> None:
    clock = virtual_clock()
    source = SimulatedSource(spec_table, "h100_sxm", 1, SCENARIOS["pretrain-bf16"], clock=clock)
    accountant = Accountant(source.devices(), [spec_table["h100_sxm"]], EstimatorSettings(),
                            clock.wall_ns(), "simulated")
    commits: list[int] = []
    sampler = Sampler(source, accountant, clock, 1.0, 5, until=after_s(20), record_s=None,
                      on_commit=lambda records: commits.append(len(records)), **kwargs)
    sampler.sample()
    assert sampler.ticks == 20
    assert sampler.checkpoints == len(commits) == checkpoints
    # Without a ledger every checkpoint commits straight into the accountant.
    assert sum(t.samples for t in accountant.gpu_totals.values()) == 20
