"""Textfile output for node_exporter's textfile collector.

For nodes where Prometheus scrapes only node_exporter: the agent writes its exposition
into node_exporter's ``--collector.textfile.directory`` and node_exporter serves it.
node_exporter's rules shape the writer:

- it reads only ``*.prom`` files, so the temporary file must not end in ``.prom``;
- a file with any client-side timestamp is rejected whole, so none are written;
- it may read at any moment, so the file is replaced by ``rename(2)``, never rewritten
  in place; ``fsync`` of the file and then of its directory makes the new content
  survive a crash as well (a rename is durable only once the directory is synced);
- it usually runs as another user, so the file is made world-readable (0644): it holds
  the same figures ``/metrics`` serves, nothing secret.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from prometheus_client import generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

FILE_MODE = 0o644


class _WithoutTimestamps(Collector):
    """The registry's families with any sample timestamp removed."""

    def __init__(self, registry: Collector) -> None:
        self._registry = registry

    def collect(self) -> Iterator[Metric]:
        for family in self._registry.collect():
            if any(s.timestamp is not None for s in family.samples):
                family.samples = [s._replace(timestamp=None) for s in family.samples]
            yield family


def _check_path(path: Path) -> None:
    if path.suffix != ".prom":
        raise ValueError(f"{path}: node_exporter's textfile collector reads only *.prom files")


def write_textfile(registry: Collector, path: Path | str) -> None:
    """Write the registry's exposition to ``path`` atomically and durably.

    Raises:
        ValueError: if ``path`` does not end in ``.prom``.
        OSError: if the directory is missing or not writable, or the disk is full; the
            previous file, if any, is left as it was.
    """
    path = Path(path)
    _check_path(path)
    data = generate_latest(_WithoutTimestamps(registry))
    directory = path.parent
    # Hidden and not ending in .prom: node_exporter never reads a half-written file.
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), FILE_MODE)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    dir_fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class TextfileWriter:
    """Rewrites the textfile at most every ``every_s`` seconds, from the sampler loop.

    Failures are logged (once per distinct error, and on recovery) and counted, never
    raised: a full disk must not stop the accounting.
    """

    def __init__(self, registry: Collector, path: Path | str, every_s: float) -> None:
        """Raises ValueError for a path not ending in ``.prom`` or ``every_s <= 0``."""
        self.registry = registry
        self.path = Path(path)
        _check_path(self.path)
        if not every_s > 0:
            raise ValueError(f"every_s must be > 0 seconds, not {every_s}")
        self.every_s = float(every_s)
        self.writes = 0
        self.failures = 0
        self.last_error: str | None = None
        self._last_write_s: float | None = None
        self._last_error_kind: tuple[str, int | None] | None = None

    def maybe_write(self, now_monotonic_s: float) -> bool:
        """Write if ``every_s`` seconds have passed since the last attempt (or none was made).

        Args:
            now_monotonic_s: the caller's monotonic clock, in seconds.

        Returns:
            True if the file was written now.
        """
        if self._last_write_s is not None and now_monotonic_s - self._last_write_s < self.every_s:
            return False
        # Counted from the attempt, not the success: a failing disk is retried at the
        # same pace, not on every tick.
        self._last_write_s = now_monotonic_s
        return self.write_now()

    def write_now(self) -> bool:
        """Write immediately (for the final flush at shutdown); True on success."""
        try:
            write_textfile(self.registry, self.path)
        except OSError as e:
            self.failures += 1
            # Keyed by kind, not text: the text names a fresh temporary file each time.
            kind = (type(e).__name__, e.errno)
            if kind != self._last_error_kind:
                log.error("cannot write the textfile %s: %s: %s", self.path,
                          type(e).__name__, e)
            self._last_error_kind = kind
            self.last_error = f"{type(e).__name__}: {e}"
            return False
        if self.last_error is not None:
            log.info("textfile %s written again", self.path)
        self.last_error = None
        self._last_error_kind = None
        self.writes += 1
        return True


def textfile_path_problem(path: Path) -> str | None:
    """What a config check should say about ``path`` as the textfile, or None if it is fine.

    Returns an "expected ..." phrase for ``agent.configfile.Problems.add``: the path
    must end in ``.prom`` and lie in an existing directory the agent can write.
    """
    if path.suffix != ".prom":
        return "a file name ending in .prom (node_exporter reads only those)"
    if not path.parent.is_dir():
        return f"a file in an existing directory (not found: {path.parent})"
    if not os.access(path.parent, os.W_OK | os.X_OK):
        return f"a file in a directory the agent can write ({path.parent})"
    return None
