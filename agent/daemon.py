"""Wiring of the live agent: source -> accountant -> snapshot -> HTTP endpoint.

One sampler thread owns the source and the accountant and is the only writer of the
snapshot; the HTTP server's threads only read the latest snapshot reference.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from prometheus_client import start_http_server
from prometheus_client.registry import CollectorRegistry

from agent.accounting import Accountant, RunInfo
from agent.clock import Clock, RealClock, VirtualClock
from agent.config import Config
from agent.estimate import GpuAssumptions
from agent.integrate import warm_up
from agent.snapshot import Snapshot
from agent.sources.base import DeviceInfo, GpuSource, SourceError
from agent.sources.simulated import SimulatedSource
from agent.specs import SpecTable, load_spec_table
from exporters.collector import FlopledgerCollector

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
    source = SimulatedSource(
        specs, config.sim.gpu_model, config.sim.gpus, config.sim.workload,
        seed=config.sim.seed, clock=clock,
    )
    return source, clock


def assumptions_for(
    devices: Sequence[DeviceInfo], specs: SpecTable, config: Config, source: GpuSource
) -> list[GpuAssumptions]:
    """What the estimator assumes per GPU, from the spec table and the run's declarations."""
    run = config.run
    precision = run.precision
    if isinstance(source, SimulatedSource) and precision is None:
        precision = source.workload.declared_precision
    out = []
    for d in devices:
        spec = specs[d.spec_key] if d.spec_key and d.spec_key in specs else None
        if spec is None:
            log.warning("GPU %d (%s) is not in the spec table %s: its FLOP cannot be "
                        "estimated until a row matches it", d.index, d.name, specs.path)
        out.append(GpuAssumptions(spec=spec, activity_kind=d.activity_kind, precision=precision,
                                  recompute_factor=run.recompute_factor,
                                  max_sm_clock_mhz=d.max_sm_clock_mhz))
    return out


@dataclass
class SamplerStats:
    overruns: int = 0
    last_tick_duration_s: float = 0.0


class Sampler:
    """The sampling loop: read, estimate, and every few ticks integrate and publish."""

    def __init__(self, source: GpuSource, accountant: Accountant, clock: Clock,
                 interval_s: float, integrate_every: int,
                 exit_after_s: float | None = None) -> None:
        self.source = source
        self.accountant = accountant
        self.clock = clock
        self.interval_ns = round(interval_s * 1e9)
        self.integrate_every = integrate_every
        self.exit_after_ns = round(exit_after_s * 1e9) if exit_after_s else None
        self.stop_event = threading.Event()
        self.stats = SamplerStats()
        self._snapshot: Snapshot = accountant.snapshot()
        self.failure: BaseException | None = None

    @property
    def snapshot(self) -> Snapshot:
        return self._snapshot

    def _publish(self) -> None:
        self._snapshot = self.accountant.snapshot(
            overruns=self.stats.overruns, last_tick_duration_s=self.stats.last_tick_duration_s
        )

    def tick(self) -> None:
        started = time.perf_counter()
        batch = self.source.read()
        self.accountant.add_batch(batch)
        if self.accountant.buffered >= self.integrate_every:
            self.accountant.integrate()
        self.stats.last_tick_duration_s = time.perf_counter() - started
        self._publish()

    def run(self) -> None:
        """Sample until stopped; then integrate what is buffered (the final flush)."""
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
            self.accountant.integrate()
            self._publish()
            self.stop_event.set()


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


def run_agent(config: Config, listen: tuple[str, int] | None = None) -> int:
    """Run the agent in the foreground until SIGTERM/SIGINT; returns the exit status."""
    specs = load_spec_table(config.agent.spec_file)
    warm_up()
    source, clock = open_source(config, specs)
    devices = source.devices()
    started_wall_ns = clock.wall_ns()
    run = config.run
    runs = [RunInfo(run.run_id, run.model, run.category)] * len(devices)
    accountant = Accountant(devices, assumptions_for(devices, specs, config, source),
                            config.estimator, runs, started_wall_ns, source.kind)
    sampler = Sampler(source, accountant, clock, config.agent.interval_s,
                      config.agent.integrate_every, config.agent.exit_after_s)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FlopledgerCollector(lambda: sampler.snapshot))
    host, port = listen or (config.agent.listen_host, config.agent.listen_port)
    tls = config.tls
    server, _thread = start_http_server(
        port, addr=host, registry=registry,
        certfile=str(tls.cert_file) if tls.cert_file else None,
        keyfile=str(tls.key_file) if tls.key_file else None,
        client_cafile=str(tls.client_ca_file) if tls.client_ca_file else None,
        client_auth_required=tls.client_ca_file is not None,
    )
    log.info("serving /metrics on %s:%d (%s); %d GPU(s) from the %s source, every %.3g s",
             host, server.server_port, "https" if tls.cert_file else "http", len(devices),
             source.kind, config.agent.interval_s)

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("signal %d: stopping after a final flush", signum)
        sampler.stop_event.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    thread = threading.Thread(target=sampler.run, name="sampler", daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(0.2)
    source.close()
    snap = sampler.snapshot
    if config.agent.summary_file:
        write_summary(config.agent.summary_file, snap)
    total = sum(g.flop_central for g in snap.gpus)
    log.info("stopped after %d ticks: %.4g FLOP (central) on %d GPU(s)", snap.ticks, total,
             len(snap.gpus))
    server.shutdown()
    return 1 if sampler.failure else 0
