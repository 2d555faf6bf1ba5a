"""Replay: recorded telemetry -> the live agent's estimator and integrator -> a ledger.

Readers (each streaming, flat in memory, reporting bad rows with their line numbers):

* :mod:`agent.replay.readers.nvidia_smi`: ``nvidia-smi --query-gpu ... --format=csv`` logs;
* :mod:`agent.replay.readers.dcgm`: dcgm-exporter scrapes (Prometheus text format);
* :mod:`agent.replay.readers.prom_range`: Prometheus ``query_range`` JSON exports;
* :mod:`agent.replay.readers.trace`: flopledger's own columnar traces (recorded by
  :func:`agent.simrun.record_trace`).

Every sample passes :mod:`agent.replay.plausible` first: a physically impossible value
or a time that cannot be true is a bad row, never part of a total.
:mod:`agent.replay.engine` drives them through
:meth:`agent.accounting.accountant.Accountant.add_samples` into a ledger; :mod:`agent.cli.replay`
is the ``flopledger replay`` command.
"""

from __future__ import annotations

from agent.replay.readers.base import BadRow, ColumnChunk, GpuKey, ReplayError

__all__ = ["BadRow", "ColumnChunk", "GpuKey", "ReplayError"]
