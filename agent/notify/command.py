"""The command hook: run a program with the notification's JSON on its stdin.

The argument vector is run as is, without a shell, so nothing in a notification can be
interpreted as shell syntax. Exit status 0 is a delivery; anything else, a timeout or a
program that cannot be started is a failure, with the end of its stderr as the error.
A program that is missing or not executable, or a notification that cannot be passed
to it (a NUL in the key), can never succeed: that failure is not retryable and the
delivery becomes a dead letter. The program runs in a session of its own so a timeout
kills it and its children.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import subprocess
from collections.abc import Mapping, Sequence

from agent.notify.message import DeliveryError, Notification

__all__ = ["CommandChannel"]

MAX_STDERR_CHARS = 1000
# exec() failures that stay failures until someone changes the file system; anything
# else (EAGAIN, ENOMEM, EMFILE from fork or pipes) is the machine being busy.
_NOT_EXECUTABLE = frozenset({errno.ENOENT, errno.EACCES, errno.EPERM, errno.ENOEXEC,
                             errno.ENOTDIR, errno.EISDIR, errno.ELOOP, errno.ENAMETOOLONG})


class CommandChannel:
    """Runs ``argv`` once per notification.

    The program also gets ``FLOPLEDGER_KEY``, ``FLOPLEDGER_KIND``,
    ``FLOPLEDGER_SEVERITY`` and ``FLOPLEDGER_RESOLVED`` (0 or 1) in its environment,
    for scripts that only need to branch on them.

    Args:
        name: the channel's name (for logs).
        argv: program and arguments; ``argv[0]`` is looked up on PATH if it has no "/".
        timeout_s: the longest the program may run (s); it is then killed.
        env: extra environment variables (on top of the agent's own).

    Raises:
        ValueError: if ``argv`` is empty or ``timeout_s`` is not positive.
    """

    resend_ns: int | None = None

    def __init__(self, name: str, argv: Sequence[str], *, timeout_s: float = 30.0,
                 env: Mapping[str, str] | None = None) -> None:
        if not argv:
            raise ValueError("argv: expected a non-empty list")
        if timeout_s <= 0:
            raise ValueError("timeout_s: expected a number of seconds > 0")
        self.name = name
        self.argv = list(argv)
        self.timeout_s = timeout_s
        self.env = dict(env or {})

    def __repr__(self) -> str:
        return f"CommandChannel({self.name!r}, {self.argv!r})"

    def deliver(self, n: Notification) -> None:
        """Run the command with the notification's JSON on stdin.

        Raises:
            DeliveryError: if it could not be started, timed out or exited non-zero;
                not retryable if the program is missing or not executable, or the
                notification cannot be put in its environment.
        """
        env = {**os.environ, **self.env, "FLOPLEDGER_KEY": n.key, "FLOPLEDGER_KIND": n.kind,
               "FLOPLEDGER_SEVERITY": n.severity,
               "FLOPLEDGER_RESOLVED": "1" if n.resolved_ns is not None else "0"}
        try:
            proc = subprocess.Popen(
                self.argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE, env=env, start_new_session=True, close_fds=True)
        except OSError as e:
            raise DeliveryError(f"cannot run {self.argv[0]}: {e}",
                                retryable=e.errno not in _NOT_EXECUTABLE) from e
        except ValueError as e:  # "embedded null byte" in an argument or the environment
            raise DeliveryError(f"cannot run {self.argv[0]}: {e}", retryable=False) from e
        try:
            _, stderr = proc.communicate(n.to_json().encode(), timeout=self.timeout_s)
        except subprocess.TimeoutExpired as e:
            _kill_group(proc)
            stderr = b""
            # A grandchild that left the session could hold stderr open forever.
            with contextlib.suppress(subprocess.TimeoutExpired):
                _, stderr = proc.communicate(timeout=5)
            raise DeliveryError(f"{self.argv[0]} timed out after {self.timeout_s:g} s"
                                f"{_tail(stderr)}") from e
        if proc.returncode != 0:
            how = (f"killed by signal {-proc.returncode}" if proc.returncode < 0
                   else f"exited with status {proc.returncode}")
            raise DeliveryError(f"{self.argv[0]} {how}{_tail(stderr)}")


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    # The hook's own children (curl, a mailer) would otherwise outlive it.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.kill()


def _tail(stderr: bytes | None) -> str:
    text = (stderr or b"").decode("utf-8", "replace").strip()
    if not text:
        return ""
    return ": " + (text if len(text) <= MAX_STDERR_CHARS else "..." + text[-MAX_STDERR_CHARS:])
