"""What the operating system says about a GPU process: environment, cgroup, user, argv.

:class:`ProcInspector` is the real implementation of
:class:`agent.accounting.attribution.ProcessInspector`, on Linux ``/proc`` through psutil. Every
method returns None when the answer cannot be had (the process exited, is a zombie, or
belongs to another user and the agent lacks the privilege), never raises: attribution
then falls back to what needs no privilege (Slurm job files, static rules).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import psutil

log = logging.getLogger(__name__)

_GONE = (psutil.NoSuchProcess, psutil.ZombieProcess)  # ZombieProcess is-a NoSuchProcess


class ProcInspector:
    """Reads process facts from ``/proc`` (psutil for environ, username and cmdline).

    Args:
        proc_root: where ``<pid>/cgroup`` files are read from; tests point it at a
            fake tree. psutil keeps reading the real ``/proc`` for the rest.
    """

    def __init__(self, proc_root: Path | str = "/proc") -> None:
        self._root = Path(proc_root)
        self._environ_denied_logged = False

    def environ(self, pid: int) -> Mapping[str, str] | None:
        """The process's environment at exec time, None if unreadable."""
        try:
            env: dict[str, str] = psutil.Process(pid).environ()
        except psutil.AccessDenied:
            if not self._environ_denied_logged:
                # Logged once: on a shared node this fails for every other user's job,
                # every time a pid is resolved, and one line says all there is to say.
                self._environ_denied_logged = True
                log.warning(
                    "cannot read the environment of pid %d: reading other users' process "
                    "environments needs root or CAP_SYS_PTRACE; their runs are attributed "
                    "only through Slurm job files, Kubernetes cgroups or static rules "
                    "(logged once)", pid,
                )
            return None
        except (*_GONE, OSError):
            return None
        return env

    def cgroup(self, pid: int) -> str | None:
        """The text of ``<proc_root>/<pid>/cgroup``, None if unreadable."""
        try:
            return (self._root / str(pid) / "cgroup").read_text(encoding="utf-8",
                                                                errors="replace")
        except OSError:
            return None

    def username(self, pid: int) -> str | None:
        """The process's real user name (its uid as text when it has no passwd entry)."""
        try:
            name: str = psutil.Process(pid).username()
        except (psutil.AccessDenied, *_GONE, OSError):
            return None
        return name

    def cmdline(self, pid: int) -> Sequence[str] | None:
        """The process's argument vector, None if unreadable."""
        try:
            argv: list[str] = psutil.Process(pid).cmdline()
        except (psutil.AccessDenied, *_GONE, OSError):
            return None
        return tuple(argv)

    def pid_namespace(self, pid: int) -> tuple[int, int] | None:
        """(inode of the PID namespace, the PID inside it), from ``ns/pid`` and the
        innermost ``NSpid`` of ``status``; None if unreadable."""
        base = self._root / str(pid)
        try:
            inode = os.stat(base / "ns" / "pid").st_ino
            status = (base / "status").read_text(encoding="utf-8", errors="replace")
        except OSError:
            return None
        for line in status.splitlines():
            if line.startswith("NSpid:"):
                parts = line.split()[1:]
                return (inode, int(parts[-1])) if parts and parts[-1].isdigit() else None
        return None
