"""The cluster service (``flopledger cluster``): threshold evaluation and notifications on
the cluster-wide totals of the PostgreSQL store, with one leader among its replicas.

- :mod:`agent.cluster.config`: its TOML file (``[cluster]``, ``[thresholds]``,
  ``[models]``, ``[notify]``).
- :mod:`agent.cluster.leader`: who leads (a PostgreSQL advisory lock on a session of its
  own).
- :mod:`agent.cluster.reading`: what one pass reads from the store (totals, the records
  the evaluation needs, the stored milestones).
- :mod:`agent.cluster.evaluator`: the agent's threshold watcher, on the store's records,
  with its milestones in the store.
- :mod:`agent.cluster.outbox` and :mod:`agent.cluster.delivery`: the notification
  outbox in the store, delivered by the leader on the agent's channels.
- :mod:`agent.cluster.metrics`: ``/metrics`` from the last published read.
- :mod:`agent.cluster.service`: the loop that ties them together.
"""
