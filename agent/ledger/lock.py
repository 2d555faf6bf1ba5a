"""One writer per state directory: an exclusive lock on ``<state_dir>/agent.lock``.

Two agents on one state directory interleave checkpoints into one ledger and fail each
other's transactions; the second must not start. ``flock`` is released by the kernel
when its holder dies, even by ``kill -9``, so a crash never leaves a stale lock behind;
the file stays (unlinking a lock file races with a process about to lock it) and holds
the holder's PID, for the message the next one prints.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from agent.ledger.errors import LedgerRefusedError

LOCK_NAME = "agent.lock"


class StateLockedError(LedgerRefusedError):
    """Another process holds the state directory's lock."""

    def __init__(self, path: Path, pid: int | None) -> None:
        holder = f"PID {pid}" if pid is not None else "another process (PID unknown)"
        super().__init__(
            f"{path} is held by {holder}: "
            "another flopledger agent (or `flopledger recover`) is using this state "
            "directory; stop it first, or give this one its own agent.state_dir")
        self.path = path
        self.pid = pid


def lock_path(state_dir: Path) -> Path:
    return state_dir / LOCK_NAME


class StateLock:
    """The held lock; :meth:`release` (or the process's end) gives it up."""

    def __init__(self, path: Path, fd: int, previous: bytes | None) -> None:
        self.path = path
        self._fd: int | None = fd
        self._previous = previous  # the file's content before, None if this made it

    def release(self, *, undo: bool = False) -> None:
        """Give the lock up; with ``undo``, also leave the lock file as it was found
        (removed if this process created it), so that a refused start or recovery
        leaves nothing behind."""
        if self._fd is None:
            return
        if undo and self._previous is None:
            # Removed while still held: a process that opened the old file fails its
            # non-blocking lock until the close below, then finds no file to share.
            self.path.unlink(missing_ok=True)
        elif undo and self._previous is not None:
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, self._previous, 0)
        os.close(self._fd)  # closing the descriptor releases the flock
        self._fd = None

    def __enter__(self) -> StateLock:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.release()


def acquire(state_dir: Path) -> StateLock:
    """Lock ``state_dir`` for this process, writing its PID into the lock file.

    Raises:
        StateLockedError: if another process holds it.
        OSError: if the directory or the lock file cannot be created.
    """
    state_dir.mkdir(parents=True, exist_ok=True)
    path = lock_path(state_dir)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        created = True
    except FileExistsError:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        created = False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        pid = _read_pid(fd)
        os.close(fd)
        raise StateLockedError(path, pid) from None
    except OSError:
        os.close(fd)
        raise
    previous = None if created else os.pread(fd, 4096, 0)
    # Only the holder rewrites the PID, so a waiting process never clears the holder's.
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return StateLock(path, fd, previous)


def holder(state_dir: Path) -> int | None:
    """The PID of the process holding the lock, or None if nobody holds it."""
    path = lock_path(state_dir)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_pid(fd)
        return None
    finally:
        os.close(fd)


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        return int(text) if text else None
    except (OSError, ValueError):
        return None
