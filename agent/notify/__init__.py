"""Threshold notifications: a durable outbox and the channels that deliver it.

The evaluator enqueues :class:`~agent.notify.message.Notification` objects (idempotent
by key) into the :class:`~agent.notify.outbox.Outbox`, which shares the ledger's SQLite
file; the :class:`~agent.notify.dispatcher.Dispatcher` delivers them at least once on
every configured channel (webhook, Alertmanager, command hook), retrying with backoff
until each one succeeds, or keeping it as a dead letter, counted and logged, when no
retry can succeed (:mod:`agent.notify.deadletter`).

The package names nothing itself: the configuration reader, which every command loads,
comes without the outbox, the dispatcher and the HTTP clients.
"""
