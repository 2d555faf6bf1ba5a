"""Wiring of the live agent: source -> accountant -> snapshot -> HTTP endpoint.

One sampler thread (the loop of :mod:`agent.sampler`) owns the source and the accountant
and is the only writer of the snapshot; the HTTP server's threads only read the latest
snapshot reference.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from prometheus_client.registry import CollectorRegistry

from agent.accounting.accountant import Accountant
from agent.accounting.attribution import Attributor
from agent.accounting.integrate import warm_up
from agent.accounting.runs import RunMeta
from agent.accounting.snapshot import Snapshot
from agent.compliance.evaluate import Evaluation
from agent.compliance.watcher import Enqueue, ThresholdWatcher
from agent.config import Config
from agent.devices import open_source, specs_for
from agent.footprint import release_library_pages
from agent.intake import SpoolIntake
from agent.ledger import lock as state_lock
from agent.ledger.integrity import check_ledger
from agent.ledger.signing import load_or_create_key
from agent.ledger.store import Ledger, LedgerDamagedError, LedgerRefusedError
from agent.ledger.verify import describe_discontinuity
from agent.notify.dispatcher import Dispatcher
from agent.notify.message import Notification
from agent.notify.outbox import Outbox
from agent.preflight import check_start
from agent.sampler import Sampler, after_s
from agent.sources.base import GpuSource
from agent.sources.spool import SpoolReader
from exporters.collector import FlopledgerCollector
from exporters.textfile import TextfileWriter
from exporters.web.server import start_metrics_server

if TYPE_CHECKING:
    # psycopg is imported only by an agent that ships its ledger to a cluster store.
    from agent.shipping import Shipper

log = logging.getLogger(__name__)


def make_attributor(config: Config, source: GpuSource) -> Attributor:
    """Process -> run attribution; the simulated source answers for its fake pids."""
    inspector = getattr(source, "process_inspector", None)
    if inspector is not None:
        return Attributor(config.attribution, inspector())
    # psutil reads the real processes: not loaded for simulated GPUs.
    from agent.sources.procinfo import ProcInspector

    return Attributor(config.attribution, ProcInspector())


def write_summary(path: Path, snap: Snapshot) -> None:
    """Final totals as JSON (for scripts and tests); written atomically."""
    doc = {
        "source": snap.source_kind,
        "ticks": snap.ticks,
        "gpus": [
            {"index": g.index, "uuid": g.uuid, "spec": g.spec_key, "spec_basis": g.spec_basis,
             "flop_low": g.flop_low,
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
    """The node's ledger in ``state_dir`` (created, with the node key, on first start),
    held by this process alone (``<state_dir>/agent.lock``) until it is closed.

    Before anything is written the ledger is checked against its head file, its totals
    against its records, its tables and column types (:func:`check_ledger`).

    Raises:
        LedgerRefusedError: another agent holds the state directory (its PID is named),
            the ledger fails its checks, or its node key is missing: nothing written.
        LedgerError: for a ledger of another node or key.
    """
    state = config.agent.state_dir
    path = state / "ledger.sqlite"
    held = state_lock.acquire(state)
    try:
        check = check_ledger(path)
        if not check.ok:
            raise LedgerDamagedError(check)
        key_path = state / "node.key"
        if (check.exists or check.mirror is not None) and not key_path.exists():
            raise LedgerRefusedError(
                f"{path} exists but its node key {key_path} is missing: a new key could not "
                "sign for it; put the node's key back (or move the ledger aside yourself)")
        key = load_or_create_key(key_path)
        ledger = Ledger(path, config.agent.node, key, check=check)
    except BaseException:
        held.release(undo=True)
        raise
    ledger.lock = held
    for note in check.notes:
        log.warning("%s", note)
    for statement in check.discontinuities:
        log.warning("%s", describe_discontinuity(statement))
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


def open_intake(config: Config, ledger: Ledger, attributor: Attributor) -> SpoolIntake | None:
    """The client spool (``[client] spool_dir``), created if missing. A spool that cannot
    be used stops no accounting: the agent says so loudly and counts on; the trainers'
    files wait in place for an agent that can read them."""
    directory = config.client.spool_dir
    if directory is None:
        return None
    reader = SpoolReader(directory)
    problem = reader.ensure()
    if problem is not None:
        log.error("%s: trainers' declarations and progress are NOT read (set [client] "
                  "spool_dir to a directory the agent can create and read)", problem)
        return None
    intake = SpoolIntake(reader, config.agent.node, config.client.progress_record_s,
                         attributor)
    intake.restore(ledger.runs())
    log.info("reading the client spool %s", directory)
    return intake


def open_shipper(config: Config, ledger: Ledger) -> Shipper | None:
    """The replication of this node's ledger to ``[cluster] url`` (None without one).
    Nothing is contacted here: a store that is down when the agent starts is no reason
    not to count."""
    cluster = config.cluster
    if cluster.url is None:
        return None
    from agent.ledger.pgconn import connect, redact
    from agent.ledger.replicate import Replicator
    from agent.shipping import Shipper

    url = cluster.url
    replicator = Replicator(
        ledger.path, lambda: connect(url, password_file=cluster.password_file,
                                     password_env=cluster.password_env),
        batch_records=cluster.batch_records, url=redact(url))
    log.info("shipping the ledger to the cluster store %s every %.3g s", redact(url),
             cluster.replicate_s)
    return Shipper(replicator, cluster.replicate_s, redact(url))


def known_runs(ledger: Ledger) -> dict[str, RunMeta]:
    return {name: RunMeta(name, row.model, row.category) for name, row in ledger.runs().items()}


def run_agent(config: Config, listen: tuple[str, int] | None = None) -> int:
    """Run the agent in the foreground until SIGTERM/SIGINT; returns the exit status.

    Args:
        listen: the address from the command line (None: ``agent.listen``).

    Raises:
        ConfigError: every problem of the config files and of the machine (state
            directory, listen address), found before anything is created.
        SourceError: if the source cannot start; nothing is created either.
    """
    if listen is not None:
        config = dataclasses.replace(config, agent=dataclasses.replace(
            config.agent, listen_host=listen[0], listen_port=listen[1]))
    checked = check_start(config, "--listen" if listen is not None else "agent.listen")
    specs = checked.specs
    registry_of_thresholds = checked.registry
    web = checked.web
    warm_up()
    # The source before the ledger: one that cannot start (exit 3) leaves no ledger
    # or node key behind.
    source, clock = open_source(config, specs)
    try:
        ledger = open_ledger(config)
    except LedgerRefusedError as e:
        # A damaged ledger or a second agent: exit 2 (the state directory), one line.
        source.close()
        print(f"flopledger: refusing to start: {e}", file=sys.stderr)
        return 2
    except BaseException:
        source.close()
        raise
    devices = source.devices()
    started_wall_ns = clock.wall_ns()
    accountant = Accountant(
        devices, specs_for(devices, specs), config.estimator, started_wall_ns, source.kind,
        node=config.agent.node, gpu_totals=ledger.totals.get("gpu", {}),
        run_totals=ledger.totals.get("run", {}), known_runs=known_runs(ledger),
    )
    attributor = make_attributor(config, source)
    intake = open_intake(config, ledger, attributor)
    sampler = Sampler(source, accountant, clock, config.agent.interval_s,
                      config.agent.integrate_every, attributor=attributor, intake=intake,
                      ledger=ledger, checkpoint_s=config.agent.checkpoint_s,
                      record_s=config.agent.record_s,
                      until=after_s(config.agent.exit_after_s),
                      export_runs_for_s=config.agent.export_runs_for_s)
    outbox = Outbox(ledger.path, config.notify.channel_names)
    dispatcher = Dispatcher(outbox, checked.channels, poll_s=config.notify.poll_s)
    watcher = ThresholdWatcher(config.thresholds, config.models, registry_of_thresholds,
                               ledger.path, enqueue=make_enqueue(outbox, dispatcher),
                               wall_ns=clock.wall_ns)

    shipper = open_shipper(config, ledger)

    # Scrapes read only published references: no SQL, no lock shared with a writer.
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FlopledgerCollector(
        lambda: sampler.snapshot, lambda: watcher.state, lambda: dispatcher.status,
        (lambda: shipper.status) if shipper is not None else None))
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
    if shipper is not None:
        shipper.start()
    released = False
    while thread.is_alive():
        # Returns as soon as the sampler ends; a signal interrupts the wait (POSIX).
        thread.join(1.0)
        if not released and sampler.ticks > 0:
            # The kernels are loaded and have run: LLVM's pages served only that.
            released = True
            release_library_pages()
    if shipper is not None:
        shipper.stop()  # after the final checkpoint: one last attempt to ship it
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
