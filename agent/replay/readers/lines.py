"""Reading a text file in blocks of whole lines, with flat memory.

Two ways, one rule for what a block holds:

* :func:`line_blocks` (dcgm-exporter scrapes, dcgmi dmon, Prometheus responses) reads a
  few MB at a time into one reused buffer and hands over the part that ends at the
  last newline; the rest is carried into the next block.
* :func:`read_line_range` (nvidia-smi logs, which replay parses in parallel) reads one
  block of a file cut at fixed offsets, ``k x block_bytes``, on its own: block ``k``
  holds every line that *starts* in ``[k x block_bytes, (k + 1) x block_bytes)``, its
  last line read on past the end, so every line belongs to exactly one block whoever
  reads it and in whatever order, and the blocks are the same for one reader or many.

A line longer than the block (a binary file, a log with its newlines stripped) cannot
be held: it is skipped up to its newline and reported, and the file goes on. A last
line without a newline is handed over on its own as the ``tail``: a writer cut off
mid-line leaves exactly that, and the readers report it as truncated rather than trust
a number that may have lost digits.
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


@dataclass(slots=True)
class LineRange:
    """The lines one block of a file owns (see the module docstring).

    Attributes:
        data: bytes read from file offset ``base``, a view of ``words``; the owned whole
            lines are ``data[start:end]``, each ending with a newline (none if
            ``start == end``). Bytes past what was read are undefined.
        words: the same buffer as little-endian uint64 words, for word-at-a-time scans.
        base: file offset of ``data[0]``.
        long_line: the block's last line (after ``data[start:end]``) is longer than
            the most a block holds: skipped.
        tail: at the end of the file, the block's last line if it has no newline.
    """

    data: ByteArray
    words: npt.NDArray[np.uint64]
    base: int
    start: int = 0
    end: int = 0
    long_line: bool = False
    tail: bytes | None = None


def range_words(limit: int, max_line: int) -> int:
    """Words a block's buffer needs: ``limit`` bytes, its last line's rest and room for
    word-at-a-time reads past the end."""
    return (limit + max_line + 24) // 8 + 1


def _read_at(fd: int, view: memoryview, offset: int) -> int:
    """Read into ``view`` from file offset ``offset`` until it is full or the file
    ends; the bytes read."""
    got = 0
    while got < len(view):
        n = os.preadv(fd, [view[got:]], offset + got)
        if n <= 0:
            break
        got += n
    return got


def _first_newline(data: ByteArray, lo: int, hi: int) -> int:
    """Offset of the first newline in ``data[lo:hi]``, -1 if none (looked for in
    growing windows: it is usually near)."""
    step = 512
    while lo < hi:
        hits = np.flatnonzero(data[lo:min(lo + step, hi)] == 10)
        if hits.size:
            return lo + int(hits[0])
        lo += step
        step *= 8
    return -1


def _last_newline(data: ByteArray, lo: int, hi: int) -> int:
    """Offset of the last newline in ``data[lo:hi]``, -1 if none."""
    step = 512
    while hi > lo:
        at = max(lo, hi - step)
        hits = np.flatnonzero(data[at:hi] == 10)
        if hits.size:
            return at + int(hits[-1])
        hi = at
        step *= 8
    return -1


def read_line_range(fd: int, first: int, lo: int, hi: int, max_line: int,
                    scratch: npt.NDArray[np.uint64] | None = None) -> LineRange:
    """The lines of an open file (``fd``) that start in ``[lo, hi)`` and not before
    ``first`` (where the lines to read begin: after a header already read).

    ``lo`` and ``hi`` are a block's fixed offsets; a line belongs to the block its
    first byte is in, and the block's last line is read on past ``hi`` up to its
    newline. A line of more than ``max_line`` bytes (its newline included) is too long
    to hold: inside the block the caller's scan skips it; as the block's last line it
    is left out here (``long_line``).

    Raises:
        OSError: if reading fails.
    """
    at = max(lo, first)
    # From one byte before: whether ``at`` starts a line is whether that byte ends one.
    base = at - 1 if at > first else at
    limit = max(hi - base, 0)  # the block's lines start before data[limit]
    need = range_words(limit, max_line)
    words = scratch if scratch is not None and scratch.shape[0] >= need else np.empty(
        need, dtype=np.uint64)
    data = words.view(np.uint8)
    if at >= hi:
        return LineRange(data, words, base)
    view = data.data
    n = _read_at(fd, view[:limit], base)
    start = 0
    if at > first:
        nl = _first_newline(data, 0, n)
        if nl < 0 or nl + 1 >= limit:
            return LineRange(data, words, base)  # no line starts in the block
        start = nl + 1
    if start >= n:
        return LineRange(data, words, base, start, start)  # the file ends here
    last = _last_newline(data, start, n)
    line_start = last + 1 if last >= 0 else start
    if line_start == n:
        # The block's last line ends with it, or the file ends there.
        return LineRange(data, words, base, start, n)
    # The block's last line goes on past its end: read on, a little at a time.
    total = n
    piece = 4096
    while n == limit and total - line_start < max_line:
        got = _read_at(fd, view[total:min(total + piece, line_start + max_line)],
                       base + total)
        nl = _first_newline(data, total, total + got)
        if nl >= 0:
            return LineRange(data, words, base, start, nl + 1)
        total += got
        piece *= 16
        if got == 0:
            break
    if total - line_start >= max_line:
        return LineRange(data, words, base, start, line_start, long_line=True)
    return LineRange(data, words, base, start, line_start, tail=bytes(data[line_start:total]))


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
