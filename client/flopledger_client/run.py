"""A training run as one rank of it tells the agent: attach, declare, report progress.

The spool is written on the training loop's own thread, so every write is small and
throttled, and a spool that cannot be written never stops training: the error is logged
once and the message waits in memory for the next call.
"""

from __future__ import annotations

import atexit
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import TracebackType

from flopledger_client import validate
from flopledger_client.declaration import build_declaration
from flopledger_client.errors import InvalidValueError
from flopledger_client.spool import Message, SpoolWriter, encode_message, make_message

log = logging.getLogger("flopledger_client")

RANK_ENV = "RANK"
WORLD_SIZE_ENV = "WORLD_SIZE"


@dataclass(frozen=True, slots=True)
class _Progress:
    tokens: int
    steps: int
    scope: str
    final: bool


def _from_env(argument: str, given: int | None, variable: str, default: int,
              minimum: int) -> int:
    if given is not None:
        value: object = given
        where = argument
    elif os.environ.get(variable, "").strip():
        text = os.environ[variable].strip()
        where = f"{argument} (from the environment variable {variable})"
        try:
            value = int(text)
        except ValueError:
            raise InvalidValueError(f"{where}: expected an integer >= {minimum}, "
                                    f"got {text!r}") from None
    else:
        return default
    number = validate.count(where, value)
    if number < minimum:
        raise InvalidValueError(f"{where}: expected an integer >= {minimum}, got {number}")
    return number


class Run:
    """One rank of a training run, writing to the agent's spool.

    Creating it writes an ``attach`` message, so the agent charges this process's GPUs
    to ``run_id``. ``rank`` and ``world_size`` default to torchrun's ``RANK`` and
    ``WORLD_SIZE``, else 0 and 1. ``report_every_s`` bounds how often :meth:`report`
    writes; ``clock`` is the monotonic clock that throttling reads.

    Use it as a context manager, or call :meth:`close` at the end; an exit hook closes
    it otherwise, so the last reported counts reach the spool.
    """

    def __init__(self, run_id: str, *, rank: int | None = None, world_size: int | None = None,
                 spool_dir: str | os.PathLike[str] | None = None,
                 report_every_s: float = 30.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.run_id = validate.name("run_id", run_id)
        self.rank = _from_env("rank", rank, RANK_ENV, 0, 0)
        self.world_size = _from_env("world_size", world_size, WORLD_SIZE_ENV, 1, 1)
        if self.rank >= self.world_size:
            raise InvalidValueError(f"rank: expected an integer below world_size "
                                    f"{self.world_size}, got {self.rank}")
        if (isinstance(report_every_s, bool) or not isinstance(report_every_s, int | float)
                or not math.isfinite(report_every_s) or report_every_s < 0):
            raise InvalidValueError(f"report_every_s: expected a finite number >= 0, "
                                    f"got {report_every_s!r}")
        self.report_every_s = float(report_every_s)
        self._writer = SpoolWriter(spool_dir)
        self._clock = clock
        self._lock = threading.RLock()
        self._pid = os.getpid()
        self._closed = False
        self._failing = False
        # Messages not yet in the spool, oldest first; each keeps its id and time, so
        # a retried message is still the one message the agent records once.
        self._pending: list[Message] = [self._message("attach")]
        self._latest: _Progress | None = None
        self._written: _Progress | None = None
        self._written_at: float | None = None
        self._progress_path: Path | None = None
        self._retry_progress = False
        with self._lock:
            self._flush_pending()
        atexit.register(self._close_at_exit)

    @property
    def spool_dir(self) -> Path:
        return self._writer.directory

    def __enter__(self) -> Run:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()

    def declare(self, *, model: str | None = None, base_models: Iterable[str] = (),
                category: str | None = None, precision: str | None = None,
                recompute: str | None = None, recompute_factor: float | None = None,
                planned_tokens: float | None = None, planned_steps: float | None = None,
                end_time: datetime | float | None = None, duration_s: float | None = None,
                params: float | None = None, layers: float | None = None,
                d_model: float | None = None, context: float | None = None,
                gpus: float | None = None) -> bool:
        """Declare what the run is and plans (docs/client-spool.md, ``declare``).

        Every rank checks the values, so a mistake fails all ranks alike; only rank 0
        writes. Raises :class:`InvalidValueError` naming a bad argument and
        :class:`MessageTooLargeError` for a declaration over the spool's size limit.
        Returns whether the declaration is in the spool now (False on other ranks, and
        while the spool cannot be written: then it is retried at the next call).
        """
        declaration = build_declaration(
            model=model, base_models=base_models, category=category, precision=precision,
            recompute=recompute, recompute_factor=recompute_factor,
            planned_tokens=planned_tokens, planned_steps=planned_steps, end_time=end_time,
            duration_s=duration_s, params=params, layers=layers, d_model=d_model,
            context=context, gpus=gpus)
        if not declaration:
            raise InvalidValueError("declare(): expected at least one value to declare")
        message = self._message("declare", declaration=declaration)
        encode_message(message)
        if self.rank != 0:
            return False
        with self._lock:
            if self._closed:
                return False
            self._pending.append(message)
            return self._flush_pending()

    def report(self, tokens: int, steps: int, *, scope: str = "rank", final: bool = False,
               force: bool = False) -> bool:
        """Report cumulative counts: ``tokens`` processed and optimizer ``steps`` taken.

        ``scope``: ``"rank"`` for this rank's own tokens, ``"run"`` for the whole run's
        (a trainer that gathers them across ranks). Written at most every
        ``report_every_s`` seconds unless ``final`` (this rank's last report) or
        ``force``; the latest counts are kept, and :meth:`close` writes them. Returns
        whether a progress message was written.
        """
        progress = _Progress(validate.count("tokens", tokens), validate.count("steps", steps),
                             validate.choice("scope", scope, validate.SCOPES), bool(final))
        with self._lock:
            if self._closed:
                return False
            self._latest = progress
            due = (final or force or self._retry_progress or self._written_at is None
                   or self._clock() - self._written_at >= self.report_every_s)
            if not due or (progress == self._written and not force):
                return False
            return self._write_progress(progress)

    def close(self) -> None:
        """Write the last counts as this rank's final report, if the spool lacks them,
        and stop; later calls do nothing."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            atexit.unregister(self._close_at_exit)
            latest = self._latest
            final = None if latest is None else _Progress(
                latest.tokens, latest.steps, latest.scope, True)
            if final is not None and final != self._written:
                self._write_progress(final)
            else:
                self._flush_pending()
            lost = [f"{len(self._pending)} message(s)"] if self._pending else []
            if final is not None and final != self._written:
                lost.append("the final report")
            if lost:
                log.warning("flopledger: run %r is closing without %s in the spool %s: "
                            "they cannot be written, and are lost", self.run_id,
                            " and ".join(lost), str(self._writer.directory))

    def _close_at_exit(self) -> None:
        # A forked child (a data loader worker) inherits the hook but is not this rank.
        if os.getpid() == self._pid:
            self.close()

    def _message(self, kind: str, **body: object) -> Message:
        return make_message(kind, run=self.run_id, rank=self.rank,
                            world_size=self.world_size, **body)

    def _write_progress(self, progress: _Progress) -> bool:
        if not self._flush_pending():
            self._retry_progress = True
            return False
        message = self._message("progress", tokens=progress.tokens, steps=progress.steps,
                                scope=progress.scope, final=progress.final)
        try:
            path = self._writer.write(message)
        except OSError as error:
            self._write_failed(error)
            self._retry_progress = True
            return False
        self._write_succeeded()
        previous, self._progress_path = self._progress_path, path
        self._written, self._written_at = progress, self._clock()
        self._retry_progress = False
        if previous is not None:
            try:
                self._writer.remove(previous)
            except OSError as error:
                # Harmless: the agent keeps the largest counts, so an old file adds nothing.
                log.debug("flopledger: could not remove %s: %s", previous, error)
        return True

    def _flush_pending(self) -> bool:
        """Write the waiting messages in order; False if one of them could not be."""
        while self._pending:
            try:
                self._writer.write(self._pending[0])
            except OSError as error:
                self._write_failed(error)
                return False
            self._pending.pop(0)
            self._write_succeeded()
        return True

    def _write_failed(self, error: OSError) -> None:
        if not self._failing:
            self._failing = True
            log.warning("flopledger: cannot write to the spool %s (%s); run %r's reports "
                        "are kept and retried at the next call",
                        str(self._writer.directory), error, self.run_id)

    def _write_succeeded(self) -> None:
        if self._failing:
            self._failing = False
            log.info("flopledger: writing to the spool %s again", str(self._writer.directory))
