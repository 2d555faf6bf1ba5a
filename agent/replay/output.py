"""The ledger a replay writes to, opened only when there is something to write.

A replay that fails (a file it cannot read, nothing valid in it, too many bad rows)
must leave no trace: so the ledger and its key (``<ledger>.key``, and the ``.pub``
beside it) are created only when the first records are appended, and removed again
if this replay created them and then fails. An existing ledger is opened at once (its
GPUs' last records tell the replay what to skip) and is left as it was unless records
are appended.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path

from agent.accounting.records import LedgerRecord
from agent.ledger.signing import load_or_create_key
from agent.ledger.store import GpuState, Ledger, RunRow
from agent.replay.readers.base import ReplayError


class LazyLedger:
    """A ledger path, opened on first use.

    Raises (from the constructor, for an existing ledger, and from :meth:`append`):
        ReplayError: for an existing ledger without its key.
        LedgerError: for a ledger of another node or key.
        sqlite3.Error: if the ledger cannot be read or written.
        OSError, ValueError: if the key cannot be read or written.
    """

    def __init__(self, path: Path, node: str) -> None:
        self.path = path
        self.node = node
        self.key_path = path.with_name(path.name + ".key")
        self._ledger: Ledger | None = None
        self._created: Callable[[], list[Path]] = list
        self.appended = 0  # records appended by this replay (and still there)
        self.states: dict[str, GpuState] = {}
        if path.exists():
            if not self.key_path.exists():
                # A new key could never append to it: say so rather than make one.
                raise ReplayError(self.key_path, f"missing: the key of the existing ledger "
                                                 f"{path} (records can only be appended with "
                                                 "the key that signed it)")
            self._open()
            assert self._ledger is not None
            self.states = self._ledger.gpu_states()

    def _open(self) -> None:
        # What the key and the ledger create, to remove if this replay fails: for a new
        # ledger, every file beside it named after it that was not there before (the
        # ledger writes its WAL, a head file, temporary files); for an existing one only
        # a key created now (its other files are SQLite's and the ledger's, maybe open
        # in another process).
        missing_dirs = [d for d in (self.path.parent, *self.path.parent.parents)
                        if not d.exists()]
        new_ledger = not self.path.exists()
        before = set(os.listdir(self.path.parent)) if not missing_dirs else set()
        keys = [p for p in (self.key_path, self.key_path.with_suffix(".pub")) if not p.exists()]

        def created() -> list[Path]:
            if not new_ledger or not self.path.parent.is_dir():
                return [*keys, *missing_dirs]
            name = self.path.name
            ours = sorted(n for n in set(os.listdir(self.path.parent)) - before
                          if n.startswith((name, "." + name)))
            return [*(self.path.parent / n for n in ours), *missing_dirs]

        self._created = created
        try:
            key = load_or_create_key(self.key_path)
            self._ledger = Ledger(self.path, self.node, key)
        except BaseException:
            self.discard()
            raise

    def append(self, records: list[LedgerRecord], now_ns: int,
               runs: dict[str, RunRow], checkpoint: tuple[str, int] | None = None) -> None:
        """Append records (creating the ledger and its key if need be), and a replay
        checkpoint (source, last ns) in the same transaction."""
        if self._ledger is None:
            self._open()
        assert self._ledger is not None
        if checkpoint is None:
            self._ledger.append(records, now_ns, runs)
        else:
            self._ledger.append(records, now_ns, runs, replay_checkpoint=checkpoint)
        self.appended += len(records)

    def close(self) -> None:
        if self._ledger is not None:
            self._ledger.close()
            self._ledger = None

    def discard(self) -> None:
        """Close, and remove what this replay created (files, then empty folders)."""
        self.close()
        for path in self._created():
            with contextlib.suppress(OSError):
                if path.is_dir():
                    path.rmdir()
                else:
                    path.unlink(missing_ok=True)
        self._created = list
        if not self.path.exists():
            self.appended = 0  # gone with the ledger this replay created
