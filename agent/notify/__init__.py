"""Threshold notifications: a durable outbox and the channels that deliver it.

The evaluator enqueues :class:`Notification` objects (idempotent by key) into the
:class:`Outbox`, which shares the ledger's SQLite file; the :class:`Dispatcher`
delivers them at least once on every configured channel (webhook, Alertmanager,
command hook), retrying with backoff until each one succeeds, or keeping it as a dead
letter, counted and logged, when no retry can succeed (:mod:`agent.notify.deadletter`).
"""

from __future__ import annotations

from agent.notify.dispatcher import Dispatcher
from agent.notify.message import Channel, DeliveryError, Notification
from agent.notify.outbox import Outbox

__all__ = ["Channel", "DeliveryError", "Dispatcher", "Notification", "Outbox"]
