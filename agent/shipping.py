"""Ships the node's ledger to the cluster store in the background.

The node's SQLite ledger stays the first durable copy: the sampler keeps committing to
it whatever the store does, and the ledger itself is the outbox: what the store does
not hold yet (its ``fl_nodes.records`` is the cursor) is shipped at the next attempt,
in batches, each in one transaction, so an outage of any length loses nothing and
ships nothing twice. An outage is said once at ERROR when it starts and once at INFO
when it ends, not at every attempt; a node the store's witness refuses is said at
ERROR once, and nothing more is shipped until an operator looks.
"""

from __future__ import annotations

import dataclasses
import logging
import sqlite3
import threading
import time
from collections.abc import Callable

from agent.ledger.errors import LedgerError
from agent.ledger.replicate import Replicator
from agent.ledger.replication_status import ReplicationStatus

log = logging.getLogger(__name__)


class Shipper:
    """The replication thread.

    Args:
        replicator: ships the node's ledger (see :class:`agent.ledger.replicate.Replicator`).
        every_s: seconds between attempts once the store is caught up (or unreachable).
        where: the store, as messages name it (a URL without password).
        wall: wall-clock seconds, for the status.
    """

    def __init__(self, replicator: Replicator, every_s: float, where: str,
                 wall: Callable[[], float] = time.time) -> None:
        self.replicator = replicator
        self.every_s = every_s
        self.where = where
        self._wall = wall
        self.status = ReplicationStatus()
        self.stop_event = threading.Event()
        self._thread = threading.Thread(target=self._run, name="replication", daemon=True)
        self._outage = False

    def start(self) -> None:
        self._thread.start()

    def stop(self, final_attempt_s: float = 10.0) -> None:
        """Stop the thread, then one last attempt (at most ``final_attempt_s`` of batches)
        so that the final checkpoint reaches the store when it can."""
        self.stop_event.set()
        if self._thread.is_alive():
            self._thread.join()
        deadline = time.monotonic() + final_attempt_s
        self.ship(until=lambda: time.monotonic() > deadline)
        self.replicator.close()

    def _run(self) -> None:
        while not self.stop_event.is_set():
            self.ship(until=self.stop_event.is_set)
            self.stop_event.wait(self.every_s)

    def ship(self, until: Callable[[], bool] = lambda: False) -> None:
        """Ship batches until caught up, refused, unreachable, or ``until()``."""
        status = self.status
        while True:
            try:
                result = self.replicator.step()
            except (LedgerError, sqlite3.Error, OSError) as e:
                status = dataclasses.replace(
                    status, up=False, failed_attempts=status.failed_attempts + 1,
                    backlog_records=(self.replicator.backlog()
                                     if status.backlog_records is not None else None))
                if not self._outage:
                    self._outage = True
                    log.error("cluster store %s: %s; this node keeps counting into its own "
                              "ledger and ships the backlog when the store answers "
                              "(retrying every %.3g s)", self.where, e, self.every_s)
                break
            if self._outage:
                self._outage = False
                log.info("cluster store %s answers again: shipping the backlog (%d records)",
                         self.where, result.backlog + result.records)
            if result.flagged is not None and status.flagged is None:
                log.error("cluster store %s refuses this node's ledger: %s; nothing more is "
                          "shipped (the local ledger keeps counting); see `flopledger "
                          "verify --ledger` on both", self.where, result.flagged)
            status = ReplicationStatus(
                up=result.flagged is None, backlog_records=result.backlog,
                shipped_records=status.shipped_records + result.records,
                failed_attempts=status.failed_attempts,
                last_success_wall_seconds=(self._wall() if result.flagged is None
                                           else status.last_success_wall_seconds),
                flagged=result.flagged)
            self.status = status
            if result.flagged is not None or result.backlog == 0 or result.records == 0 \
                    or until():
                break
        self.status = status
