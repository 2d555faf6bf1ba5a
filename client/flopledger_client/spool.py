"""Spool messages and their atomic files (docs/client-spool.md).

A message is written to ``.<name>.tmp``, flushed and fsync'd, then renamed to
``<name>``: the agent reads only names that end in ``.json`` and do not start with a
dot, so it never sees half a message, and a crash before the rename leaves only a
temporary file it ignores.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import time
import uuid
from collections.abc import Mapping
from pathlib import Path

from flopledger_client.errors import MessageTooLargeError

SPOOL_FORMAT = "flopledger-spool-1"
KINDS: tuple[str, ...] = ("attach", "declare", "progress", "attestation", "gate")
DEFAULT_SPOOL_DIR = Path("/run/flopledger/spool")
SPOOL_DIR_ENV = "FLOPLEDGER_SPOOL_DIR"
MAX_MESSAGE_BYTES = 65536
# Readable by the agent even when it runs as its own user and the trainer's umask is
# 077; the spool directory (mode 1733) lets nobody else list the files.
_FILE_MODE = 0o644

Message = dict[str, object]


def spool_dir(directory: str | os.PathLike[str] | None = None) -> Path:
    """The spool directory: ``directory``, else ``$FLOPLEDGER_SPOOL_DIR``, else
    :data:`DEFAULT_SPOOL_DIR`."""
    if directory is not None and str(directory):
        return Path(directory)
    from_env = os.environ.get(SPOOL_DIR_ENV, "")
    return Path(from_env) if from_env else DEFAULT_SPOOL_DIR


def pid_namespace() -> int | None:
    """The inode of this process's PID namespace, which lets the agent match a PID
    seen from another namespace (a container); None where /proc does not tell."""
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return None


def make_message(kind: str, *, run: str | None, rank: int = 0, world_size: int = 1,
                 **body: object) -> Message:
    """A message of ``kind`` with the common fields filled in for this process, now."""
    if kind not in KINDS:
        raise ValueError(f"kind: expected one of {', '.join(KINDS)}, got {kind!r}")
    message: Message = {
        "format": SPOOL_FORMAT,
        "kind": kind,
        "id": uuid.uuid4().hex,
        "time_ns": time.time_ns(),
        "pid": os.getpid(),
        "pid_ns": pid_namespace(),
        "host": socket.gethostname(),
    }
    if run is not None:
        message["run"] = run
    message["rank"] = rank
    message["world_size"] = world_size
    message.update(body)
    return message


def _encoded_size(value: object) -> int:
    return len(json.dumps(value, ensure_ascii=False).encode("utf-8"))


def _largest_field(message: Mapping[str, object]) -> tuple[str, int]:
    """The dotted path of the field taking the most room, and its encoded size."""
    path: list[str] = []
    node: Mapping[str, object] = message
    while True:
        key = max(node, key=lambda k: _encoded_size(node[k]))
        path.append(key)
        value = node[key]
        if not isinstance(value, Mapping) or not value:
            return ".".join(path), _encoded_size(value)
        node = value


def encode_message(message: Mapping[str, object]) -> bytes:
    """``message`` as the UTF-8 JSON the agent reads; :class:`MessageTooLargeError`
    when over :data:`MAX_MESSAGE_BYTES`, naming the field that takes the most room."""
    data = (json.dumps(message, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
            + "\n").encode("utf-8")
    if len(data) > MAX_MESSAGE_BYTES:
        field, size = _largest_field(message)
        raise MessageTooLargeError(
            f"{field}: the {message.get('kind', '')} message would take {len(data)} bytes, "
            f"over the spool's limit of {MAX_MESSAGE_BYTES}; {field} alone takes {size}")
    return data


def file_name(kind: str, time_ns: int, pid: int) -> str:
    """``<kind>-<time_ns>-<pid>-<8 random hex digits>.json``."""
    return f"{kind}-{time_ns}-{pid}-{secrets.token_hex(4)}.json"


class SpoolWriter:
    """Writes messages into one spool directory, each as its own atomic file.

    The directory is the agent's (it creates it with mode 1733); the writer never
    creates it, so a missing spool shows up as an :class:`OSError` from :meth:`write`.
    """

    def __init__(self, directory: str | os.PathLike[str] | None = None) -> None:
        self.directory = spool_dir(directory)

    def write(self, message: Mapping[str, object]) -> Path:
        """Write ``message`` atomically; returns the file's path. Raises
        :class:`MessageTooLargeError` before touching the disk, :class:`OSError` when
        the spool cannot be written (then no file of this message is left behind)."""
        data = encode_message(message)
        kind, time_ns, pid = message["kind"], message["time_ns"], message["pid"]
        if not isinstance(kind, str) or not isinstance(time_ns, int) or not isinstance(pid, int):
            raise ValueError("message: expected the kind, time_ns and pid of make_message()")
        name = file_name(kind, time_ns, pid)
        final = self.directory / name
        temporary = self.directory / f".{name}.tmp"
        fd = os.open(temporary,
                     os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     _FILE_MODE)
        try:
            try:
                os.fchmod(fd, _FILE_MODE)
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(temporary, final)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise
        self._sync_directory()
        return final

    def remove(self, path: Path) -> None:
        """Delete one of this writer's files; one already gone (the agent consumed it)
        is no error."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)

    def _sync_directory(self) -> None:
        # Makes the rename itself durable. Best effort: a spool of mode 1733 cannot be
        # opened for reading by anyone but its owner, and the file's data is already
        # on disk, so at worst a crash loses the name and the agent never sees it.
        try:
            fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            return
        try:
            os.fsync(fd)
        except OSError:
            pass
        finally:
            os.close(fd)
