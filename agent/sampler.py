"""The one sampling loop: live, simulated and recorded runs all go through it.

Each tick: read a batch from the source, attribute its processes to runs, hand batch
and attributions to the per-batch hooks (a trace writer, a test), feed the accountant,
integrate every ``integrate_every`` ticks, checkpoint every ``checkpoint_s`` (or every
``checkpoint_ticks``) into the ledger (or commit without one), and publish a snapshot
for readers. When the loop stops, a final checkpoint flushes what is left.

What differs between the uses is a parameter, not a copy of the loop:

* the clock and its pacing: the live agent sleeps on a :class:`RealClock` (or a scaled
  :class:`VirtualClock`) until the next deadline, skipping ticks it missed; a simulated
  run (``step=True``) advances a :class:`VirtualClock` by exactly one interval after each
  tick, without threads or waiting, so it is reproducible to the nanosecond;
* the stop condition (``until``, see :func:`after_s` and :func:`beyond_s`) and
  :attr:`Sampler.stop_event`;
* the ledger (None: records are committed to the accountant only) and the hooks;
* the accountant itself (None: read and attribute only, as a trace recording does).
"""

from __future__ import annotations

import dataclasses
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from agent.accounting.accountant import Accountant
from agent.accounting.attribution import Attributor
from agent.accounting.records import LedgerRecord, is_compute
from agent.accounting.runs import GpuAttribution
from agent.accounting.snapshot import Snapshot
from agent.sources.base import DeviceInfo, GpuSource, SampleBatch
from agent.sources.clock import Clock, VirtualClock
from exporters.textfile import TextfileWriter

if TYPE_CHECKING:
    # The ledger needs cryptography; a loop without a ledger (benchmarks.gpu_check on a
    # machine with only the sampling dependencies) must not import it.
    from agent.intake import SpoolIntake
    from agent.ledger.store import Ledger

log = logging.getLogger(__name__)

BatchHook = Callable[[SampleBatch, list[GpuAttribution] | None], None]
"""Sees every batch and its attributions (None without an attributor) before the
accountant does."""
CommitHook = Callable[[Sequence[LedgerRecord]], None]
"""Sees the closed records of every successful checkpoint, once each."""
StopCondition = Callable[[int], bool]
"""Called before every tick with the nanoseconds since the loop started (on the
sampler's clock); True ends the loop."""


def after_s(seconds: float | None) -> StopCondition | None:
    """Stop once ``seconds`` have passed: the agent's ``exit_after_s`` (None or 0: never)."""
    if not seconds:
        return None
    limit_ns = round(seconds * 1e9)
    return lambda elapsed_ns: elapsed_ns >= limit_ns


def beyond_s(seconds: float) -> StopCondition:
    """Stop once more than ``seconds`` have passed: a tick at exactly ``seconds`` still
    runs, so a simulated run samples both ends of its span."""
    limit_ns = round(seconds * 1e9)
    return lambda elapsed_ns: elapsed_ns > limit_ns


@dataclass
class SamplerStats:
    """The loop's own health, for the self-metrics: ticks skipped, last tick's cost."""

    overruns: int = 0
    last_tick_duration_s: float = 0.0


class Sampler:
    """The sampling loop; see the module docstring.

    Args:
        source: where batches come from.
        accountant: the totals (None: the loop only reads, attributes and calls hooks).
        clock: where time comes from.
        interval_s: seconds between ticks.
        integrate_every: integrate when this many ticks are buffered.
        attributor: process -> run attribution (None: the accountant's last one holds).
        ledger: where checkpoints go (None: committed to the accountant only). The
            ledger's gaps to the first sample are charged on the first tick.
        checkpoint_s: seconds between checkpoints, on ``clock`` (the first tick only
            starts the count); ignored when ``checkpoint_ticks`` is set.
        checkpoint_ticks: checkpoint after every this many ticks instead.
        record_s: a record closes after this long (or at the final checkpoint); until
            then it is stored as an open record. None: every checkpoint closes them all.
        until: ends the loop (see :func:`after_s`, :func:`beyond_s`); None: only
            :attr:`stop_event` does.
        step: advance ``clock`` (a :class:`VirtualClock`) by one interval after each tick
            instead of sleeping until the next deadline; time a tick takes on that clock
            (a simulated stall) then delays every later tick rather than skipping one.
        hooks: called with every batch and its attributions, before the accountant.
        on_commit: called with the closed records of every successful checkpoint.
        publish_s: seconds between snapshots, on ``clock`` (None: only the final one).
        export_runs_for_s: how long an ended run stays in the snapshot.
        intake: the client spool, read at every checkpoint into the same ledger
            transaction (needs ``ledger``).

    Raises:
        ValueError: for ``step`` without a virtual clock, or ``checkpoint_ticks`` < 1.
    """

    def __init__(self, source: GpuSource, accountant: Accountant | None, clock: Clock,
                 interval_s: float, integrate_every: int = 5, *,
                 attributor: Attributor | None = None, ledger: Ledger | None = None,
                 checkpoint_s: float = 5.0, checkpoint_ticks: int | None = None,
                 record_s: float | None = 60.0, until: StopCondition | None = None,
                 step: bool = False, hooks: Sequence[BatchHook] = (),
                 on_commit: CommitHook | None = None, publish_s: float | None = 1.0,
                 export_runs_for_s: float = 7 * 86400.0,
                 intake: SpoolIntake | None = None) -> None:
        if step and not isinstance(clock, VirtualClock):
            raise ValueError("step=True needs a VirtualClock: a real clock cannot be advanced")
        if checkpoint_ticks is not None and checkpoint_ticks < 1:
            raise ValueError(f"checkpoint_ticks must be at least 1, not {checkpoint_ticks}")
        self.source = source
        self.accountant = accountant
        self.clock = clock
        self.attributor = attributor
        self.ledger = ledger
        self.devices: Sequence[DeviceInfo] = (
            accountant.devices if accountant is not None else source.devices())
        self.interval_ns = round(interval_s * 1e9)
        self.integrate_every = integrate_every
        self.checkpoint_ns = round(checkpoint_s * 1e9)
        self.checkpoint_ticks = checkpoint_ticks
        self.record_ns = round(record_s * 1e9) if record_s is not None else None
        self.until = until
        self.step = step
        self.hooks = tuple(hooks)
        self.on_commit = on_commit
        self.publish_ns = round(publish_s * 1e9) if publish_s is not None else None
        self.export_runs_for_ns = round(export_runs_for_s * 1e9)
        self.intake = intake if ledger is not None else None
        self.stop_event = threading.Event()
        self.stats = SamplerStats()
        self.textfile: TextfileWriter | None = None
        self.failure: BaseException | None = None
        self.ticks = 0
        self.checkpoints = 0
        self.checkpoint_failures = 0
        self._snapshot = accountant.snapshot() if accountant is not None else None
        self._started = False
        self._last_checkpoint_ns: int | None = None
        self._last_publish_ns = 0

    @property
    def snapshot(self) -> Snapshot:
        """The latest published snapshot.

        Raises:
            RuntimeError: for a sampler without an accountant.
        """
        if self._snapshot is None:
            raise RuntimeError("a sampler without an accountant has no snapshot")
        return self._snapshot

    def _publish(self) -> None:
        if self.accountant is None:
            return
        snap = self.accountant.snapshot(
            overruns=self.stats.overruns, last_tick_duration_s=self.stats.last_tick_duration_s,
            runs_since_ns=self.clock.wall_ns() - self.export_runs_for_ns,
        )
        if self.intake is not None:
            snap = dataclasses.replace(snap, declared=self.intake.snapshot())
        self._snapshot = snap

    def _resume_gaps(self, wall_ns: int) -> None:
        # The time between the ledger's last record of a GPU and this agent's first
        # sample was seen by nobody: a gap, charged to the runs the GPU last had.
        if self.ledger is None or self.accountant is None:
            return
        states = self.ledger.gpu_states()
        for pos, d in enumerate(self.accountant.devices):
            state = states.get(d.uuid)
            if state is not None and wall_ns > state.last_end_ns:
                self.accountant.add_gap(pos, state.last_end_ns, wall_ns, state.last_runs)

    def checkpoint(self, final: bool = False) -> bool:
        """Commit everything integrated so far; False (and nothing lost) on failure.

        Records close after ``record_s`` (or at the final checkpoint); until then they
        are stored as open records, replaced at every checkpoint. A run that has left
        this node's GPUs, and at the final checkpoint every run, gets a ``run-close`` in
        the same transaction (see :meth:`agent.ledger.store.Ledger.close_run`).
        """
        acc = self.accountant
        if acc is None:
            return True
        acc.integrate()
        now = self.clock.wall_ns()
        close_all = final or self.record_ns is None
        closed, still_open = acc.take_records(None if close_all else now, self.record_ns or 0)
        if self.ledger is not None:
            from agent.ledger.store import RunRow

            intake = self.intake
            pending = (intake.collect(self.ledger, now, close_all, acc.runs.get)
                       if intake is not None else None)
            runs = {r.run: RunRow(r.run, r.model, r.category, _run_meta(acc, r.run))
                    for r in [*closed, *still_open]}
            if intake is not None and pending is not None:
                for name in pending.runs:
                    if name not in runs and (row := intake.row(name)) is not None:
                        runs[name] = row
                for name, row in runs.items():
                    row.meta.update(intake.run_meta(name))
            leaving = _leaving(self.ledger, acc, closed, still_open, final)
            try:
                try:
                    self.ledger.append([*closed, *(pending.statements if pending else ())],
                                       now, runs, still_open=still_open,
                                       consumed_ids=pending.consumed_ids if pending else (),
                                       close_runs=leaving)
                except ValueError as e:
                    # A statement the ledger refuses must never hold back the compute:
                    # commit the compute, leave those spool files where they are.
                    log.error("client spool: %s; the compute is committed without the "
                              "spool's statements, whose files stay in the spool", e)
                    pending = None
                    self.ledger.append(closed, now, runs, still_open=still_open,
                                       close_runs=leaving)
            except sqlite3.Error as e:
                # A full disk or an I/O error: keep the records and try again next time.
                self.checkpoint_failures += 1
                acc.requeue(closed)
                if intake is not None and pending is not None:
                    intake.failed(pending)
                log.error("ledger checkpoint failed (%s); %d record(s) kept in memory, "
                          "retrying", e, len(closed) + len(still_open))
                return False
            if intake is not None and pending is not None:
                intake.committed(pending)
        acc.commit(closed, still_open)
        self.checkpoints += 1
        if self.on_commit is not None:
            self.on_commit(closed)
        return True

    def _checkpoint_due(self, now_ns: int) -> bool:
        if self.checkpoint_ticks is not None:
            return self.ticks % self.checkpoint_ticks == 0
        if self._last_checkpoint_ns is None:
            self._last_checkpoint_ns = now_ns
            return False
        if now_ns - self._last_checkpoint_ns >= self.checkpoint_ns:
            self._last_checkpoint_ns = now_ns
            return True
        return False

    def tick(self) -> None:
        """One sample, through everything it feeds."""
        started = time.perf_counter()
        batch = self.source.read()
        if not self._started:
            self._started = True
            self._resume_gaps(batch.wall_time_ns)
        attributions = (self.attributor.attribute(self.devices, batch)
                        if self.attributor is not None else None)
        for hook in self.hooks:
            hook(batch, attributions)
        self.ticks += 1
        acc = self.accountant
        if acc is not None:
            acc.add_batch(batch, attributions)
            if acc.buffered >= self.integrate_every:
                acc.integrate()
        now = self.clock.monotonic_ns()
        if acc is not None and self._checkpoint_due(now):
            self.checkpoint()
        self.stats.last_tick_duration_s = time.perf_counter() - started
        # Scrapes come every few seconds: a fresh snapshot once a second is plenty,
        # and at 10 Hz building one per tick would be most of the agent's work.
        if self.publish_ns is not None and now - self._last_publish_ns >= self.publish_ns:
            self._last_publish_ns = now
            self._publish()
            if self.textfile is not None:
                # Real time, not the (possibly sped-up) sampling clock.
                self.textfile.maybe_write(time.monotonic())

    def _wait(self, deadline_ns: int) -> tuple[bool, int]:
        """Wait for the next tick; (False if stopped, the deadline after it)."""
        if self.step:
            assert isinstance(self.clock, VirtualClock)  # checked in __init__
            self.clock.advance_ns(self.interval_ns)
            return not self.stop_event.is_set(), deadline_ns
        deadline_ns += self.interval_ns
        now = self.clock.monotonic_ns()
        if now > deadline_ns:
            # Sampling took longer than the interval (or the process was stopped):
            # skip the missed ticks rather than bunching them up.
            missed = (now - deadline_ns) // self.interval_ns + 1
            self.stats.overruns += int(missed)
            deadline_ns += missed * self.interval_ns
        return self.clock.sleep_until(deadline_ns, self.stop_event), deadline_ns

    def sample(self) -> None:
        """Sample until stopped; then integrate and commit what is left (final flush).

        Raises:
            whatever the source, the attributor, a hook or the accountant raises (after
            the final flush).
        """
        try:
            start_ns = deadline_ns = self.clock.monotonic_ns()
            while not self.stop_event.is_set():
                if self.until is not None and self.until(self.clock.monotonic_ns() - start_ns):
                    break
                self.tick()
                going, deadline_ns = self._wait(deadline_ns)
                if not going:
                    break
        finally:
            try:
                if self._started and not self.checkpoint(final=True):
                    log.error("final checkpoint failed: the records since the last "
                              "checkpoint are not in the ledger and will show as a gap on "
                              "restart")
            finally:
                self._publish()
                if self.textfile is not None:
                    self.textfile.write_now()
                self.stop_event.set()

    def run(self) -> None:
        """The sampler thread: :meth:`sample`, keeping a failure in :attr:`failure`
        (the main thread reports it and exits non-zero)."""
        try:
            self.sample()
        except BaseException as e:
            self.failure = e
            log.exception("sampler failed")


def _leaving(ledger: Ledger, acc: Accountant, closed: Sequence[LedgerRecord],
             still_open: Sequence[LedgerRecord], final: bool) -> list[str]:
    """The runs to close in this checkpoint: those with records no close counts yet that
    left this node (no share on any of its GPUs, no open record: ended, preempted,
    moved); at the final checkpoint every one. A run that comes back reopens, and its
    next close counts the new records."""
    candidates = ledger.unclosed_runs() | {r.run for r in closed if is_compute(r)}
    if not final:
        # The accountant's attributions: a GPU that went silent keeps its runs there.
        candidates -= acc.current_runs()
        candidates -= {r.run for r in still_open}
    return sorted(candidates)


def _run_meta(accountant: Accountant, run_id: str) -> dict[str, object]:
    meta = accountant.runs.get(run_id)
    if meta is None:
        return {}
    out: dict[str, object] = {"via": meta.via, "recompute": meta.recompute,
                              "recompute_factor": meta.recompute_factor}
    if meta.precision:
        out["precision"] = meta.precision
    if meta.base_models:
        out["base_models"] = list(meta.base_models)
    out.update({f"plan.{k}": v for k, v in meta.plan.items()})
    return out
