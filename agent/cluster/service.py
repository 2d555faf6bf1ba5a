"""The cluster service's loop: every ``evaluate_s``, one pass over the store.

Each pass, on every replica: try to lead (a follower takes the lock as soon as it is
free: within one interval of a leader's death), read the cluster-wide totals in one
repeatable-read transaction and, on the leader, evaluate the thresholds on the same
read, store the milestones and enqueue the notifications; then publish what was found
for ``/metrics`` (a scrape runs no SQL). The leader's delivery threads send what the
outbox holds due.

A store that cannot be reached is one ERROR line per outage, not per attempt, and never
ends the service: it tries again every ``evaluate_s``, leads no more meanwhile (its lock
session is gone), and ``/metrics`` serves the totals of the last read with
``flopledger_cluster_store_up`` 0.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from types import FrameType
from typing import Any

import psycopg
from prometheus_client.registry import CollectorRegistry

from agent.cluster.config import ClusterConfig
from agent.cluster.delivery import ClusterDispatcher
from agent.cluster.evaluator import ClusterWatcher, StoreMilestones
from agent.cluster.leader import Leadership
from agent.cluster.metrics import ClusterCollector, ClusterState
from agent.cluster.outbox import ClusterOutbox
from agent.cluster.reading import read_totals
from agent.compliance.evaluate import Evaluation
from agent.compliance.state import ThresholdState
from agent.compliance.thresholds import Registry, load_registry
from agent.configfile import ConfigError, ErrorCollector, Problems
from agent.ledger.errors import LedgerError
from agent.ledger.pg_query import ClusterView
from agent.ledger.pgconn import connect, ensure_schema, pg_error, redact
from agent.ledger.query import RunSummary
from agent.notify.config import build_channels
from agent.notify.message import Channel, Notification
from agent.notify.status import NotifyStatus
from agent.preflight import listen_problem
from exporters.web.config import WebConfig, load_web_config
from exporters.web.server import start_metrics_server

__all__ = ["ClusterService", "check_start", "run_cluster"]

log = logging.getLogger(__name__)

Conn = psycopg.Connection[Any]


class ClusterService:
    """One replica of the cluster service (see the module docstring).

    Args:
        config: the cluster config.
        registry: the threshold regimes.
        channels: the notification channels, by name.
        wall_ns: the wall clock (ns since the Unix epoch).
    """

    def __init__(self, config: ClusterConfig, registry: Registry,
                 channels: Mapping[str, Channel],
                 wall_ns: Callable[[], int] = time.time_ns) -> None:
        self.config = config
        self.registry = registry
        self.wall_ns = wall_ns
        self.where = redact(config.url)
        self.outbox = ClusterOutbox(config.notify.channel_names)
        self.leadership = Leadership(self._connect, keepalive_s=config.evaluate_s)
        self._write: Conn | None = None
        self.watcher = ClusterWatcher(config.thresholds, config.models, registry,
                                      StoreMilestones(self._write_conn), self._enqueue,
                                      wall_ns)
        self.dispatcher = ClusterDispatcher(self.outbox, channels, self._connect,
                                            self.leadership.fence_pid,
                                            poll_s=config.notify.poll_s, clock_ns=wall_ns)
        self.state = ClusterState()  # swapped whole after each pass; /metrics reads it
        self._down_since: float | None = None
        self._evaluation_failing = False
        self._pass_failing = False

    # ------------------------------------------------------------------ connections

    def _connect(self) -> Conn:
        """Raises: PgError (one line, no password)."""
        c = self.config
        return connect(c.url, password_file=c.password_file, password_env=c.password_env,
                       autocommit=True)

    def _write_conn(self) -> Conn:
        """The connection milestones and notifications are written on; the tables are
        created on first use (the store may be empty yet).

        Raises:
            PgError, psycopg.Error.
        """
        if self._write is None or self._write.closed:
            conn = self._connect()
            try:
                ensure_schema(conn)
            except BaseException:
                conn.close()
                raise
            self._write = conn
        return self._write

    def _close_write(self) -> None:
        conn, self._write = self._write, None
        if conn is not None:
            # Already gone with the outage.
            with contextlib.suppress(psycopg.Error):
                conn.close()

    def _enqueue(self, key: str, kind: str, level: float, severity: str, e: Evaluation,
                 payload: dict[str, object]) -> bool:
        a = e.assessment
        now = self.wall_ns()
        n = Notification(key=key, kind=kind, subject_type=a.subject.kind,
                         subject=a.subject.name, regime=a.regime.key, level=level,
                         severity=severity, created_ns=now, payload=payload)
        added = self.outbox.enqueue(self._write_conn(), n, now)
        if added:
            self.dispatcher.wake()
        return added

    # ------------------------------------------------------------------ one pass

    def step(self) -> ClusterState:
        """One pass (see the module docstring); returns the state it published."""
        try:
            self._write_conn()
            leading = self.leadership.check()
            with ClusterView(self._connect_read(), self.where) as view:
                summaries = view.run_summaries()
                totals = read_totals(view, summaries, self.config.models,
                                     self.registry.scopes, self.wall_ns() / 1e9)
                thresholds = self._evaluate(view, summaries) if leading else None
            notify = NotifyStatus.of(self.outbox.status(self._write_conn()), self.wall_ns())
        except (LedgerError, psycopg.Error) as e:
            self._store_down(e)
            return self.state
        if self._down_since is not None:
            log.info("the cluster store %s is reachable again (after %.0f s)", self.where,
                     time.monotonic() - self._down_since)
            self._down_since = None
        leading = self.leadership.leading
        self.state = ClusterState(totals, leading, True, thresholds if leading else None,
                                  notify)
        if leading:
            self.dispatcher.wake()
        return self.state

    def _connect_read(self) -> Conn:
        c = self.config
        return connect(c.url, password_file=c.password_file, password_env=c.password_env)

    def _evaluate(self, view: ClusterView, summaries: Mapping[str, RunSummary]
                  ) -> ThresholdState | None:
        """The leader's evaluation on ``view``; a bug in it is logged (once until it
        works again) and leaves the thresholds unpublished, never the service down.

        Raises:
            LedgerError, psycopg.Error: the store failed.
        """
        try:
            state = self.watcher.evaluate_view(view, summaries)
        except (LedgerError, psycopg.Error):
            raise
        except Exception:
            if not self._evaluation_failing:
                log.exception("threshold evaluation failed; retried every %g s",
                              self.config.evaluate_s)
            self._evaluation_failing = True
            return None
        if self._evaluation_failing:
            log.info("threshold evaluation works again")
        self._evaluation_failing = False
        return state

    def _store_down(self, e: BaseException) -> None:
        if self._down_since is None:
            self._down_since = time.monotonic()
            message = str(e) if isinstance(e, LedgerError) else str(
                pg_error(e, self.config.url, "talking to the store"))
            log.error("cluster store unusable: %s; retrying every %g s (not leading "
                      "meanwhile; /metrics serves the last read)", message,
                      self.config.evaluate_s)
        self.leadership.release()
        self._close_write()
        self.state = replace(self.state, leader=False, store_up=False, thresholds=None)

    # ------------------------------------------------------------------ the loop

    def run(self, stop: threading.Event, exit_after_s: float | None = None) -> None:
        """Pass after pass until ``stop`` is set (or ``exit_after_s`` has passed)."""
        end = None if exit_after_s is None else time.monotonic() + exit_after_s
        self.dispatcher.start()
        try:
            while not stop.is_set():
                try:
                    self.step()
                    self._pass_failing = False
                except Exception:  # a bug in one pass must not end the service
                    if not self._pass_failing:
                        log.exception("cluster pass failed; tried again every %g s",
                                      self.config.evaluate_s)
                    self._pass_failing = True
                wait = self.config.evaluate_s
                if end is not None:
                    wait = min(wait, end - time.monotonic())
                    if wait <= 0:
                        break
                stop.wait(wait)
        finally:
            self.close()

    def close(self) -> None:
        """Stop delivering, give up the lead, close every connection."""
        self.dispatcher.stop()
        self.leadership.release()
        self._close_write()
        self.state = replace(self.state, leader=False)


def check_start(config: ClusterConfig, listen: tuple[str, int], listen_key: str
                ) -> tuple[Registry, dict[str, Channel], WebConfig | None]:
    """Everything that can be checked before the service starts, in one pass: the
    thresholds file, the channels' secrets, the web config, the store's password
    source, the listen address. The store itself is not needed to start (it is
    retried).

    Raises:
        ConfigError: one per file with problems, naming each key.
    """
    errors = ErrorCollector()
    registry = errors.attempt(lambda: load_registry(config.thresholds_file))

    def channels() -> dict[str, Channel]:
        try:
            return build_channels(config.notify, config.path)
        except (OSError, ValueError) as e:  # a ca_file that exists but does not load
            raise ConfigError(config.path,
                              [("notify", f"channels that can be set up ({e})")]) from e

    built = errors.attempt(channels)
    web_file = config.web.config_file
    web = errors.attempt(lambda: load_web_config(web_file)) if web_file is not None else None
    problems = Problems(config.path)
    if config.password_env is not None and not os.environ.get(config.password_env):
        problems.add("cluster.password_env", f"an environment variable that is set and not "
                     f"empty ({config.password_env})")
    if (why := listen_problem(*listen)) is not None:
        problems.add(listen_key, why)
    errors.attempt(problems.raise_if_any)
    errors.raise_if_any()
    # raise_if_any above: both loaded.
    assert registry is not None
    assert built is not None
    return registry, built, web


def run_cluster(config: ClusterConfig, listen: tuple[str, int] | None = None,
                exit_after_s: float | None = None) -> int:
    """Run one replica in the foreground until SIGTERM/SIGINT; returns the exit status.

    Raises:
        ConfigError: every problem found before anything starts.
    """
    address = listen or (config.listen_host, config.listen_port)
    registry, channels, web = check_start(
        config, address, "--listen" if listen is not None else "cluster.listen")
    service = ClusterService(config, registry, channels)
    metrics = CollectorRegistry(auto_describe=False)
    metrics.register(ClusterCollector(lambda: service.state))
    server = start_metrics_server(metrics, *address, web)
    log.info("cluster service for %s: serving %s; evaluating every %g s when leading",
             service.where, server.url, config.evaluate_s)
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("signal %d: stopping", signum)
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        service.run(stop, exit_after_s)
    finally:
        server.shutdown()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return 0
