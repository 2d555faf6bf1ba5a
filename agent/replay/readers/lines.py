"""Reading a text file in blocks of whole lines, with flat memory.

The text readers (nvidia-smi CSV, dcgm-exporter scrapes) read a few MB at a time into
one reused buffer and hand over the part that ends at the last newline; the rest is
carried into the next block. A line longer than the buffer (a binary file, a log with
its newlines stripped) cannot be carried: it is skipped up to its newline and reported,
and the file goes on. A last line without a newline is handed over on its own as the
``tail``: a writer cut off mid-line leaves exactly that, and the readers report it as
truncated rather than trust a number that may have lost digits.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from agent.replay.readers.base import BadRow, ReplayError

DEFAULT_BLOCK_BYTES = 8 << 20
ByteArray = npt.NDArray[np.uint8]


class Readable(Protocol):
    def readinto(self, buffer: Any, /) -> int | None: ...


@dataclass(slots=True)
class Block:
    """Whole lines of a file.

    Attributes:
        data: the bytes of whole lines, each ending with a newline (may be empty). A
            view of the reader's buffer: valid until the next block is requested.
        overlong_before: lines longer than the buffer skipped just before ``data``.
        tail: at the end of the file, the last line if it has no newline, else None.
        bytes_done: file offset just after ``data`` (or the tail).
        eof: True for the last block of the file.
    """

    data: ByteArray
    overlong_before: int
    tail: bytes | None
    bytes_done: int
    eof: bool = False

    def overlong_rows(self, first_line: int, reason: str) -> list[BadRow]:
        """The skipped over-long lines as bad rows, numbered from ``first_line``; the
        next line of ``data`` is ``first_line + overlong_before``."""
        return [BadRow(first_line + i, reason) for i in range(self.overlong_before)]

    def take_lines(self, first_line: int, take: Callable[[str, int], str | None]
                   ) -> tuple[list[BadRow], int]:
        """Hand each text line to ``take(text, line_no)``, which returns why a line is
        bad or None; the bad rows (the over-long lines and a truncated last line among
        them) and the number of the next line."""
        bad = self.overlong_rows(first_line, "line longer than the read buffer")
        line_no = first_line + self.overlong_before
        for text in bytes(self.data).decode("utf-8", "replace").split("\n")[:-1]:
            reason = take(text, line_no)
            if reason is not None:
                bad.append(BadRow(line_no, reason))
            line_no += 1
        if self.tail is not None:
            if self.tail.strip(b" \t\r"):
                bad.append(BadRow(line_no, "truncated last line (no newline at end of file)"))
            line_no += 1
        return bad, line_no


def open_binary(path: Path) -> io.FileIO:
    """Open a recording for reading.

    Raises:
        ReplayError: if it cannot be opened (missing, a directory, no permission).
    """
    try:
        if path.is_dir():
            raise ReplayError(path, "is a directory, not a recording")
        return io.FileIO(path, "rb")
    except OSError as e:
        raise ReplayError(path, f"cannot open: {e.strerror or e}") from e


def file_size(path: Path) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


def line_blocks(f: Readable, block_bytes: int = DEFAULT_BLOCK_BYTES) -> Iterator[Block]:
    """Blocks of whole lines from ``f`` (read in ``block_bytes`` pieces).

    Raises:
        OSError: if reading fails (the caller turns it into a ReplayError).
    """
    buf = bytearray(max(block_bytes, 64))
    view = memoryview(buf)
    carry = 0
    done = 0
    skipping = False  # inside a line longer than the buffer
    overlong = 0
    empty = np.zeros(0, dtype=np.uint8)
    while True:
        n = f.readinto(view[carry:]) or 0
        total = carry + n
        done += n
        if n == 0:
            tail = bytes(buf[:total]) if total and not skipping else None
            yield Block(empty, overlong, tail, done, eof=True)
            return
        if skipping:
            nl = buf.find(b"\n", 0, total)
            if nl < 0:
                carry = 0
                continue
            skipping = False
            buf[: total - nl - 1] = buf[nl + 1 : total]
            carry = total - nl - 1
            continue
        last = buf.rfind(b"\n", 0, total)
        if last < 0:
            if total < len(buf):
                carry = total
                continue
            overlong += 1
            skipping = True
            carry = 0
            continue
        data = np.frombuffer(buf, dtype=np.uint8, count=last + 1)
        yield Block(data, overlong, None, done - (total - last - 1))
        del data
        overlong = 0
        rest = total - last - 1
        buf[:rest] = buf[last + 1 : total]
        carry = rest
