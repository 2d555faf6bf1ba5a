"""A replay on several cores: the blocks of its nvidia-smi logs parsed ahead of it.

A log is cut into blocks at fixed offsets (``k x block_bytes``; a block holds the lines
that start in it, see :mod:`agent.replay.readers.lines`), and each block is parsed on
its own, with its own table of GPUs and its lines numbered from 1
(:func:`~agent.replay.readers.nvidia_smi.parse_block`), so that any worker can parse any
block. :class:`ParallelBlocks` keeps the next few blocks of the replay, across its files,
being parsed by ``jobs`` workers, and hands them over in file order; the reader joins
them (GPU ids in order of first appearance, line numbers counted on, a block parsed
again in place if a header before it changed the columns). Everything after the parse
(plausibility, estimate, integration, records, ledger) runs in the one engine thread, in
file order, on exactly the chunks a replay with one job sees: so totals and records are
the same, bit for bit, for any number of workers.

Workers are threads: the parse kernel releases the GIL, and a thread hands its columns
over without copying them (processes, measured too, pay for pickling what they parsed
and for starting; ``processes=True`` selects them).
"""

from __future__ import annotations

import multiprocessing
import os
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor

from agent.replay.readers.base import ReplayError
from agent.replay.readers.nvidia_smi import LogPlan, ParsedBlock, parse_block


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


class ParallelBlocks:
    """The blocks of a replay's nvidia-smi logs, parsed ahead by ``jobs`` workers.

    Args:
        files: how many files the replay has.
        plan_of: the plan of file ``i`` (None: not an nvidia-smi log); a ReplayError it
            raises is raised again by :meth:`plan` when that file's turn comes.
        jobs: workers.
        ahead: blocks parsed or being parsed ahead of the one asked for (memory stays
            at about that many blocks); default ``2 x jobs``.
        processes: workers are processes (forked) instead of threads.
    """

    def __init__(self, files: int, plan_of: Callable[[int], LogPlan | None], jobs: int,
                 ahead: int | None = None, processes: bool = False) -> None:
        self._files = files
        self._plan_of = plan_of
        self._plans: dict[int, LogPlan | ReplayError | None] = {}
        self._order: dict[int, int] = {}  # id(plan) -> file number
        self._tasks = self._every_block()
        self._queue: deque[tuple[tuple[int, int], Future[ParsedBlock]]] = deque()
        self._ahead = max(1, ahead if ahead is not None else 2 * jobs)
        self._pool: Executor = (
            ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("fork"))
            if processes else ThreadPoolExecutor(jobs, thread_name_prefix="replay-parse"))

    def _every_block(self) -> Iterator[tuple[int, LogPlan, int]]:
        for i in range(self._files):
            try:
                plan = self._plan_of(i)
            except ReplayError as e:
                self._plans[i] = e
                continue
            self._plans[i] = plan
            if plan is not None:
                self._order[id(plan)] = i
                for index in range(plan.blocks):
                    yield i, plan, index

    def _submit_next(self) -> bool:
        task = next(self._tasks, None)
        if task is None:
            return False
        i, plan, index = task
        self._queue.append(((i, index), self._pool.submit(parse_block, plan, index,
                                                          plan.header)))
        return True

    def _fill(self) -> None:
        while len(self._queue) < self._ahead and self._submit_next():
            pass

    def plan(self, i: int) -> LogPlan | None:
        """The plan of file ``i`` (None: not an nvidia-smi log).

        Raises:
            ReplayError: if the file cannot be planned (unreadable, no header, ...).
        """
        while i not in self._plans and self._submit_next():
            pass
        plan = self._plans.get(i)
        if isinstance(plan, ReplayError):
            raise plan
        return plan

    def parsed(self, plan: LogPlan, index: int) -> ParsedBlock:
        """Block ``index`` of ``plan``, parsed with its first header in effect. Blocks
        asked for out of order, or never planned here, are parsed in place.

        Raises:
            ReplayError: if the file cannot be read.
        """
        want = (self._order.get(id(plan), -1), index)
        while True:
            self._fill()
            if not self._queue or self._queue[0][0] > want or want[0] < 0:
                return parse_block(plan, index, plan.header)
            key, future = self._queue.popleft()
            if key == want:
                self._fill()
                return future.result()
            future.cancel()  # a block of a file whose reading stopped early

    def close(self) -> None:
        """Stop the workers (blocks not started are dropped)."""
        for _, future in self._queue:
            future.cancel()
        self._queue.clear()
        self._pool.shutdown(wait=True, cancel_futures=True)
