"""GPUs that stop answering: since when each has been silent, and what its silence was
charged while it lasted.

A GPU whose batch entry is ``up=False`` (fallen off the bus, in a driver reset, its
NVML handle stale) gives no sample, so nothing bounds its work until it answers again;
and if it never does before the agent stops, nothing ever would. So once a GPU has been
silent longer than ``max_gap_s`` (from then on its next sample's interval is a gap, not
an ordinary interval), each tick charges the silence so far to its high bound at the
GPU's highest possible rate: :meth:`Silences.observe` returns what to add since the
last tick, and a checkpoint stores it like any other figure. The first ``max_gap_s`` of
a silence are bounded as any interval is: by the next sample, or, if the agent stops
first, by the gap its next start charges from the GPU's last record.

When the GPU answers again, the integration of its first sample counts the whole
silence as one gap, as a replay of the same samples (which holds no rows for a silent
GPU) does; what the ticks charged for it is taken off there (:meth:`Silences.credit`),
so the totals are those of the one gap, bit for bit. Rounding follows the integration
kernel's: whole :data:`~agent.accounting.integrate.FLOP_UNIT` units, rounded up.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from agent.accounting.integrate import NS_TO_UNITS
from agent.sources.base import FloatArray, IntArray, SampleBatch


@dataclass(frozen=True, slots=True)
class SilenceCharge:
    """What one silent GPU adds at one tick: high FLOP units and gap time, over the
    silence that started at ``since_wall_ns`` (wall clock, ns since the epoch)."""

    gpu: int
    since_wall_ns: int
    high_units: int
    gap_ns: int


class Silences:
    """Silent GPUs of one accountant, by position.

    Args:
        n_gpus: how many GPUs.
        max_gap_ns: intervals longer than this are gaps (the estimator's ``max_gap_s``).
    """

    def __init__(self, n_gpus: int, max_gap_ns: int) -> None:
        self._max_gap_ns = max_gap_ns
        # Per GPU: the monotonic time of its last sample (-1: answering), the wall time
        # then, and (high units, gap ns) charged so far for the silence.
        self._since_ns = [-1] * n_gpus
        self._since_wall_ns = [0] * n_gpus
        self._charged = [(0, 0)] * n_gpus
        self._credit = [(0, 0)] * n_gpus
        self.active = False  # some GPU is silent, or its credit is not yet taken

    def observe(self, batch: SampleBatch, previous: SampleBatch | None,
                last_flop_ts: IntArray, gap_rate_flops: FloatArray) -> list[SilenceCharge]:
        """What the silent GPUs of ``batch`` add now; a GPU that answers again has its
        charges set aside for :meth:`credit`.

        Args:
            batch: this tick.
            previous: the tick before (None at the first); where a GPU that just went
                silent had its last sample.
            last_flop_ts: the integration's last timestamp per GPU; a GPU silent from
                the first tick has it set here (in place) to that tick, so that its
                first sample's interval reaches back to it.
            gap_rate_flops: per GPU, its highest possible rate (FLOP/s).
        """
        out = []
        for i in range(len(self._since_ns)):
            since = self._since_ns[i]
            if batch.up[i]:
                if since >= 0:
                    self._credit[i] = self._charged[i]
                    self._charged[i] = (0, 0)
                    self._since_ns[i] = -1
                continue
            now = int(batch.timestamp_ns[i])
            if since < 0:
                if previous is not None and previous.up[i]:
                    since = int(previous.timestamp_ns[i])
                    self._since_wall_ns[i] = previous.wall_time_ns
                else:
                    since = now
                    self._since_wall_ns[i] = batch.wall_time_ns
                    if last_flop_ts[i] < 0:
                        last_flop_ts[i] = now
                self._since_ns[i] = since
            silent_ns = now - since
            if silent_ns <= self._max_gap_ns:
                continue  # if it answers now, its interval is an ordinary one
            # The kernel's arithmetic for a gap, over the whole silence so far.
            units = math.ceil(float(gap_rate_flops[i]) * (silent_ns * NS_TO_UNITS))
            charged_units, charged_ns = self._charged[i]
            self._charged[i] = (max(units, charged_units), max(silent_ns, charged_ns))
            out.append(SilenceCharge(i, self._since_wall_ns[i], max(0, units - charged_units),
                                     max(0, silent_ns - charged_ns)))
        self.active = any(t >= 0 for t in self._since_ns) or any(
            c != (0, 0) for c in self._credit)
        return out

    def credit(self, i: int) -> tuple[int, int]:
        """(high units, gap ns) already charged for the silence that GPU ``i``'s next
        integrated sample ends; (0, 0) if none. Taken once."""
        credit = self._credit[i]
        self._credit[i] = (0, 0)
        return credit
