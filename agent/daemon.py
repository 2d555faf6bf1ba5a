"""Wiring of the live agent: source -> accountant -> snapshot -> HTTP endpoint.

One sampler thread owns the source and the accountant and is the only writer of the
snapshot; the HTTP server's threads only read the latest snapshot reference.
"""

from __future__ import annotations

import json
import logging
import signal
import sqlite3
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from prometheus_client.registry import CollectorRegistry

from agent.accounting.accountant import Accountant
from agent.accounting.attribution import Attributor
from agent.accounting.integrate import warm_up
from agent.accounting.runs import RunMeta
from agent.accounting.snapshot import Snapshot
from agent.compliance.evaluate import Evaluation
from agent.compliance.thresholds import load_registry
from agent.compliance.watcher import Enqueue, ThresholdWatcher
from agent.config import Config
from agent.ledger.signing import load_or_create_key
from agent.ledger.store import Ledger, RunRow
from agent.notify.config import build_channels
from agent.notify.dispatcher import Dispatcher
from agent.notify.message import Notification
from agent.notify.outbox import Outbox
from agent.sources.base import DeviceInfo, GpuSource, SourceError
from agent.sources.clock import Clock, RealClock, VirtualClock
from agent.sources.procinfo import ProcInspector
from agent.sources.simulated import SimulatedSource
from agent.sources.specs import GpuSpec, SpecTable, load_spec_table
from exporters.collector import FlopledgerCollector
from exporters.textfile import TextfileWriter
from exporters.web.config import load_web_config
from exporters.web.server import start_metrics_server

log = logging.getLogger(__name__)


def make_clock(config: Config, source_kind: str) -> Clock:
    if source_kind == "simulated" and config.sim.virtual_time:
        return VirtualClock(time_scale=config.sim.time_scale)
    return RealClock()


def open_source(config: Config, specs: SpecTable) -> tuple[GpuSource, Clock]:
    """The configured source; with ``auto``, NVML if it works, else the simulator.

    Raises:
        SourceError: if the requested source cannot start.
    """
    kind = config.agent.source
    if kind in ("auto", "nvml"):
        from agent.sources.nvml import NvmlSource, nvml_unavailable_reason

        reason = nvml_unavailable_reason()
        if reason is None:
            real = RealClock()
            return NvmlSource(specs, clock=real), real
        if kind == "nvml":
            raise SourceError(f"NVML source requested but unavailable: {reason}")
        log.warning(
            "NO NVIDIA GPU USABLE (%s): running on SIMULATED GPUs (%d x %s, scenario %s). "
            "Totals below are from the simulator, not from hardware.",
            reason, config.sim.gpus, config.sim.gpu_model, config.sim.scenario,
        )
    clock = make_clock(config, "simulated")
    epoch = config.sim.epoch_unix_s
    source = SimulatedSource(
        specs, config.sim.gpu_model, config.sim.gpus, config.sim.workload,
        seed=config.sim.seed, clock=clock, jobs=config.sim.jobs,
        epoch_wall_ns=round(epoch * 1e9) if epoch is not None else None,
    )
    return source, clock


def specs_for(devices: Sequence[DeviceInfo], specs: SpecTable) -> list[GpuSpec | None]:
    """The spec-table row of each device (None, loudly, for a GPU the table lacks)."""
    out: list[GpuSpec | None] = []
    for d in devices:
        spec = specs[d.spec_key] if d.spec_key and d.spec_key in specs else None
        if spec is None:
            log.warning("GPU %d (%s) is not in the spec table %s: its FLOP cannot be "
                        "estimated until a row matches it", d.index, d.name, specs.path)
        out.append(spec)
    return out


def make_attributor(config: Config, source: GpuSource) -> Attributor:
    """Process -> run attribution; the simulated source answers for its fake pids."""
    inspector = getattr(source, "process_inspector", None)
    return Attributor(config.attribution, inspector() if inspector else ProcInspector())


@dataclass
class SamplerStats:
    overruns: int = 0
    last_tick_duration_s: float = 0.0


class Sampler:
    """The sampling loop: read, attribute, estimate; integrate every few ticks; commit
    a checkpoint to the ledger every ``checkpoint_s``; publish a snapshot every tick."""

    def __init__(self, source: GpuSource, accountant: Accountant, clock: Clock,
                 interval_s: float, integrate_every: int, *,
                 attributor: Attributor | None = None, ledger: Ledger | None = None,
                 checkpoint_s: float = 5.0, record_s: float = 60.0,
                 exit_after_s: float | None = None,
                 export_runs_for_s: float = 7 * 86400.0) -> None:
        self.source = source
        self.accountant = accountant
        self.clock = clock
        self.attributor = attributor
        self.ledger = ledger
        self.interval_ns = round(interval_s * 1e9)
        self.integrate_every = integrate_every
        self.checkpoint_ns = round(checkpoint_s * 1e9)
        self.record_ns = round(record_s * 1e9)
        self.exit_after_ns = round(exit_after_s * 1e9) if exit_after_s else None
        self.export_runs_for_ns = round(export_runs_for_s * 1e9)
        self.stop_event = threading.Event()
        self.stats = SamplerStats()
        self._snapshot: Snapshot = accountant.snapshot()
        self._last_checkpoint_ns: int | None = None
        self._last_publish_ns = 0
        self.publish_ns = 1_000_000_000
        self._resumed = False
        self.failure: BaseException | None = None
        self.textfile: TextfileWriter | None = None
        self.checkpoints = 0
        self.checkpoint_failures = 0

    @property
    def snapshot(self) -> Snapshot:
        return self._snapshot

    def _publish(self) -> None:
        self._snapshot = self.accountant.snapshot(
            overruns=self.stats.overruns, last_tick_duration_s=self.stats.last_tick_duration_s,
            runs_since_ns=self.clock.wall_ns() - self.export_runs_for_ns,
        )

    def _resume_gaps(self, wall_ns: int) -> None:
        # The time between the ledger's last record of a GPU and this agent's first
        # sample was seen by nobody: a gap, charged to the runs the GPU last had.
        if self.ledger is None:
            return
        states = self.ledger.gpu_states()
        for pos, d in enumerate(self.accountant.devices):
            state = states.get(d.uuid)
            if state is not None and wall_ns > state.last_end_ns:
                self.accountant.add_gap(pos, state.last_end_ns, wall_ns, state.last_runs)

    def checkpoint(self, final: bool = False) -> bool:
        """Commit everything integrated so far; False (and nothing lost) on failure.

        Records close after ``record_s`` (or at the final checkpoint); until then they
        are stored as open records, replaced at every checkpoint.
        """
        self.accountant.integrate()
        now = self.clock.wall_ns()
        closed, still_open = self.accountant.take_records(
            None if final else now, self.record_ns)
        if self.ledger is None:
            self.accountant.commit(closed, still_open)
            return True
        runs = {r.run: RunRow(r.run, r.model, r.category, _run_meta(self.accountant, r.run))
                for r in [*closed, *still_open]}
        try:
            self.ledger.append(closed, now, runs, still_open=still_open)
        except sqlite3.Error as e:
            # A full disk or an I/O error: keep the records and try again next time.
            self.checkpoint_failures += 1
            self.accountant.requeue(closed)
            log.error("ledger checkpoint failed (%s); %d record(s) kept in memory, retrying",
                      e, len(closed) + len(still_open))
            return False
        self.accountant.commit(closed, still_open)
        self.checkpoints += 1
        return True

    def tick(self) -> None:
        started = time.perf_counter()
        batch = self.source.read()
        if not self._resumed:
            self._resumed = True
            self._resume_gaps(batch.wall_time_ns)
        attributions = (self.attributor.attribute(self.accountant.devices, batch)
                        if self.attributor is not None else None)
        self.accountant.add_batch(batch, attributions)
        if self.accountant.buffered >= self.integrate_every:
            self.accountant.integrate()
        now = self.clock.monotonic_ns()
        if self._last_checkpoint_ns is None:
            self._last_checkpoint_ns = now
        elif now - self._last_checkpoint_ns >= self.checkpoint_ns:
            self._last_checkpoint_ns = now
            self.checkpoint()
        self.stats.last_tick_duration_s = time.perf_counter() - started
        # Scrapes come every few seconds: a fresh snapshot once a second is plenty,
        # and at 10 Hz building one per tick would be most of the agent's work.
        if now - self._last_publish_ns >= self.publish_ns:
            self._last_publish_ns = now
            self._publish()
            if self.textfile is not None:
                # Real time, not the (possibly sped-up) sampling clock.
                self.textfile.maybe_write(time.monotonic())

    def run(self) -> None:
        """Sample until stopped; then integrate and commit what is left (final flush)."""
        try:
            start_ns = self.clock.monotonic_ns()
            deadline = start_ns
            while not self.stop_event.is_set():
                if self.exit_after_ns is not None and (
                    self.clock.monotonic_ns() - start_ns >= self.exit_after_ns
                ):
                    break
                self.tick()
                deadline += self.interval_ns
                now = self.clock.monotonic_ns()
                if now > deadline:
                    # Sampling took longer than the interval (or the process was
                    # stopped): skip the missed ticks rather than bunching them up.
                    missed = (now - deadline) // self.interval_ns + 1
                    self.stats.overruns += int(missed)
                    deadline += missed * self.interval_ns
                if not self.clock.sleep_until(deadline, self.stop_event):
                    break
        except BaseException as e:  # the main thread reports it and exits non-zero
            self.failure = e
            log.exception("sampler failed")
        finally:
            try:
                if self._resumed and not self.checkpoint(final=True):
                    log.error("final checkpoint failed: the last %.0f s are not in the ledger "
                              "and will show as a gap on restart", self.checkpoint_ns / 1e9)
            finally:
                self._publish()
                if self.textfile is not None:
                    self.textfile.write_now()
                self.stop_event.set()


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


def write_summary(path: Path, snap: Snapshot) -> None:
    """Final totals as JSON (for scripts and tests); written atomically."""
    doc = {
        "source": snap.source_kind,
        "ticks": snap.ticks,
        "gpus": [
            {"index": g.index, "uuid": g.uuid, "flop_low": g.flop_low,
             "flop_central": g.flop_central, "flop_high": g.flop_high,
             "energy_joules": g.energy_joules, "gap_seconds": g.gap_seconds,
             "covered_seconds": g.covered_seconds, "sim_true_flop": g.sim_true_flop}
            for g in snap.gpus
        ],
        "runs": [
            {"run": r.run_id, "flop_low": r.flop_low, "flop_central": r.flop_central,
             "flop_high": r.flop_high, "energy_joules": r.energy_joules}
            for r in snap.runs
        ],
    }
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1))
    tmp.replace(path)


def open_ledger(config: Config) -> Ledger:
    """The node's ledger in ``state_dir`` (created, with the node key, on first start).

    Raises:
        LedgerError: for a ledger of another node or key, or a damaged one.
    """
    state = config.agent.state_dir
    key = load_or_create_key(state / "node.key")
    ledger = Ledger(state / "ledger.sqlite", config.agent.node, key)
    # Records a crash left open were durable up to their last checkpoint: seal them
    # before anything new is added, so the gap to this start begins where they end.
    sealed = ledger.seal_open(time.time_ns())
    if sealed:
        log.info("sealed %d record(s) left open by the previous run", len(sealed))
    return ledger


def make_enqueue(outbox: Outbox, dispatcher: Dispatcher) -> Enqueue:
    """The watcher's hook: notifications into the durable outbox, then wake delivery."""

    def enqueue(key: str, kind: str, level: float, severity: str, e: Evaluation,
                payload: dict[str, object]) -> bool:
        a = e.assessment
        n = Notification(key=key, kind=kind, subject_type=a.subject.kind,
                         subject=a.subject.name, regime=a.regime.key, level=level,
                         severity=severity, created_ns=time.time_ns(), payload=payload)
        added = outbox.enqueue(n)
        if added:
            dispatcher.wake()
        return added

    return enqueue


def known_runs(ledger: Ledger) -> dict[str, RunMeta]:
    return {name: RunMeta(name, row.model, row.category) for name, row in ledger.runs().items()}


def run_agent(config: Config, listen: tuple[str, int] | None = None) -> int:
    """Run the agent in the foreground until SIGTERM/SIGINT; returns the exit status."""
    specs = load_spec_table(config.agent.spec_file)
    registry_of_thresholds = load_registry(config.agent.thresholds_file)
    web = load_web_config(config.web.config_file) if config.web.config_file else None
    warm_up()
    ledger = open_ledger(config)
    source, clock = open_source(config, specs)
    devices = source.devices()
    started_wall_ns = clock.wall_ns()
    accountant = Accountant(
        devices, specs_for(devices, specs), config.estimator, started_wall_ns, source.kind,
        node=config.agent.node, gpu_totals=ledger.totals.get("gpu", {}),
        run_totals=ledger.totals.get("run", {}), known_runs=known_runs(ledger),
    )
    sampler = Sampler(source, accountant, clock, config.agent.interval_s,
                      config.agent.integrate_every, attributor=make_attributor(config, source),
                      ledger=ledger, checkpoint_s=config.agent.checkpoint_s,
                      record_s=config.agent.record_s,
                      exit_after_s=config.agent.exit_after_s,
                      export_runs_for_s=config.agent.export_runs_for_s)
    outbox = Outbox(ledger.path, config.notify.channel_names)
    dispatcher = Dispatcher(outbox, build_channels(config.notify), poll_s=config.notify.poll_s)
    watcher = ThresholdWatcher(config, registry_of_thresholds, ledger.path,
                               enqueue=make_enqueue(outbox, dispatcher), wall_ns=clock.wall_ns)

    def notify_status() -> dict[str, dict[str, float]]:
        return {name: {"pending": s.pending, "delivered": s.delivered,
                       "failed_attempts": s.failed_attempts}
                for name, s in outbox.status().items()}

    registry = CollectorRegistry(auto_describe=False)
    registry.register(FlopledgerCollector(lambda: sampler.snapshot, lambda: watcher.state,
                                          notify_status))
    if config.textfile.path is not None:
        sampler.textfile = TextfileWriter(registry, config.textfile.path, config.textfile.every_s)
    host, port = listen or (config.agent.listen_host, config.agent.listen_port)
    server = start_metrics_server(registry, host, port, web)
    log.info("serving %s; %d GPU(s) from the %s source, every %.3g s; ledger %s (%d records)",
             server.url, len(devices), source.kind, config.agent.interval_s, ledger.path,
             ledger.size)

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("signal %d: stopping after a final checkpoint", signum)
        sampler.stop_event.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    thread = threading.Thread(target=sampler.run, name="sampler", daemon=True)
    thread.start()
    dispatcher.start()
    watcher.start()
    while thread.is_alive():
        thread.join(0.2)
    watcher.stop()
    dispatcher.stop(10)
    outbox.close()
    source.close()
    ledger.close()
    snap = sampler.snapshot
    if config.agent.summary_file:
        write_summary(config.agent.summary_file, snap)
    total = sum(g.flop_central for g in snap.gpus)
    log.info("stopped after %d ticks: %.4g FLOP (central) in the ledger for %d GPU(s)",
             snap.ticks, total, len(snap.gpus))
    server.shutdown()
    return 1 if sampler.failure else 0
