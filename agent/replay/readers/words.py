"""Bytes eight at a time: the word tricks of the nvidia-smi kernel
(:mod:`agent.replay.readers.smi_kernel`), each a pure numba function.

``load8`` reads the (unaligned) little-endian word at a byte offset from the aligned
words of a buffer with at least 8 bytes of room past the data. A byte equal to b is a
zero byte of ``word ^ (b x 0x01..)``, found exactly (no false positives from borrows) by
the high bit of ``~(((x & 0x7f..) + 0x7f..) | x | 0x7f..)``; a byte is a decimal digit
when ``byte ^ 0x30`` is at most 9, which ``(((x & 0x7f..) + 0x76..) | x) & 0x80..``
tests per byte without carries; the lowest marked byte's position is the number of
bytes below it, summed by a multiplication. Hot loads index with ``np.uint64``: numba
then emits no check for negative (from-the-end) indices, which a signed index gets on
every access (offsets here are never negative). ``tests/replay/test_smi_kernel.py`` checks
each against plain Python.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
from numba import njit

# Powers of ten: exact as float64 up to 10**22, as int64 up to 10**9.
POW10 = np.array([10.0**k for k in range(23)])
POW10_INT = np.array([10**k for k in range(10)], dtype=np.int64)


def padded_words(raw: bytes) -> npt.NDArray[np.uint64]:
    """Bytes as little-endian uint64 words with room past their end, as the kernels
    read them (:func:`load8` reads the word after the last one)."""
    words = np.zeros(len(raw) // 8 + 2, dtype=np.uint64)
    words.view(np.uint8)[: len(raw)] = np.frombuffer(raw, dtype=np.uint8)
    return words


_U1 = np.uint64(1)
_U8 = np.uint64(8)
_LOW7 = np.uint64(0x7F7F7F7F7F7F7F7F)
_HIGH = np.uint64(0x8080808080808080)
_ZEROS = np.uint64(0x3030303030303030)
_NINE_UP = np.uint64(0x7676767676767676)
_COMMAS = np.uint64(0x2C2C2C2C2C2C2C2C)
_NEWLINES = np.uint64(0x0A0A0A0A0A0A0A0A)
_BYTE_LANES = np.uint64(0x000000FF000000FF)
_PAIR_LANES = np.uint64(0x000F000F000F000F)
_MUL_HI = np.uint64(100 + (1000000 << 32))
_MUL_LO = np.uint64(1 + (10000 << 32))
_TEN = np.uint64(10)
_U16 = np.uint64(16)
_U32 = np.uint64(32)
_U4 = np.uint64(4)
_LOW16 = np.uint64(0xFFFF)
_BYTE = np.uint64(0xFF)
_ONES = np.uint64(0x0101010101010101)
_U7 = np.uint64(7)
_U56 = np.uint64(56)
_POINT = np.uint64(46)


@njit(cache=True, nogil=True, inline="always")
def load8(words: Any, p: int) -> Any:
    """The 8 bytes at byte offset ``p`` as a little-endian uint64."""
    i = np.uint64(p >> 3)
    shift = np.uint64((p & 7) << 3)
    return (words[i] >> shift) | ((words[i + _U1] << (np.uint64(63) - shift)) << _U1)


@njit(cache=True, nogil=True, inline="always")
def low_bytes(n: int) -> Any:
    """A mask of the low ``n`` (0 to 8) bytes of a word."""
    if n >= 8:
        return ~np.uint64(0)
    return (_U1 << np.uint64(8 * n)) - _U1


@njit(cache=True, nogil=True, inline="always")
def first_marked(marks: Any) -> int:
    """Index of the lowest byte whose high bit is set in ``marks`` (where only high
    bits are set); 8 if none: the bytes below it, counted by one multiplication."""
    below = (marks - _U1) & ~marks
    return int(np.int64((((below >> _U7) & _ONES) * _ONES) >> _U56))


@njit(cache=True, nogil=True, inline="always")
def leading_digits(word: Any, n: int) -> tuple[int, int]:
    """(count, value) of the decimal digits that begin the first ``n`` (1 to 8) bytes of
    ``word``; the value is 0 unless the count is 1 to 7."""
    x = word ^ _ZEROS
    marks = (((x & _LOW7) + _NINE_UP) | x) & _HIGH
    if n < 8:
        marks |= _HIGH << np.uint64(8 * n)
    k = first_marked(marks)
    if k == 0 or k == 8:
        return k, 0
    # The k digits to the top bytes (the rest become leading zeros), then pairs, quads
    # and the eight-digit value by three multiplications (Lemire's method).
    v = x << np.uint64(8 * (8 - k))
    v = v * _TEN + (v >> _U8)
    v = ((v & _BYTE_LANES) * _MUL_HI + ((v >> _U16) & _BYTE_LANES) * _MUL_LO) >> _U32
    return k, int(np.int64(v))


@njit(cache=True, nogil=True, inline="always")
def nibbles(x: Any) -> Any:
    """Eight bytes holding values 0-15 (the first most significant) as a 32-bit value."""
    p = ((x & _PAIR_LANES) << _U4) | ((x >> _U8) & _PAIR_LANES)
    q = ((p & _BYTE_LANES) << _U8) | ((p >> _U16) & _BYTE_LANES)
    return ((q & _LOW16) << _U16) | ((q >> _U32) & _LOW16)


@njit(cache=True, nogil=True, inline="always")
def quick_number(buf: Any, words: Any, s: int, e: int, unit_word: Any, unit_bytes: int
                  ) -> tuple[bool, float]:
    """The common shape of a value, read eight bytes at a time: 1-7 digits, optionally a
    point and 1-7 digits, optionally one space and the unit (``unit_word``: the space
    and the unit, ``unit_bytes`` long; 0 for none). (False, 0) for anything else, which
    :func:`_number` then decides; where this says True it gives the same value."""
    n = e - s
    if n <= 0 or n > 16:
        return False, 0.0
    head = load8(words, s)
    k, mant = leading_digits(head, min(n, 8))
    # The fraction is read whether or not a point follows (fewer branches to guess).
    point = k < n and k < 8 and ((head >> np.uint64(8 * (k & 7))) & _BYTE) == _POINT
    q = s + k + 1
    f, digits = leading_digits(load8(words, q), max(min(e - q, 8), 1))
    frac = f if point else 0
    mant = mant * POW10_INT[np.uint64(frac)] + (digits if point else 0)
    p = q + f if point else s + k
    if k == 0 or k == 8 or (point and (f == 0 or f == 8)):
        return False, 0.0
    if p != e and (unit_bytes == 0 or e - p != unit_bytes
                   or (load8(words, p) & low_bytes(unit_bytes)) != unit_word):
        return False, 0.0
    # At most 14 digits: exact, and one division by an exact power of ten is the
    # correctly rounded value, as in _number.
    return True, mant / POW10[np.uint64(frac)]


@njit(cache=True, nogil=True, inline="always")
def quick_hex(buf: Any, words: Any, s: int, e: int) -> int:
    """A mask of 16 decimal digits (``0x0000000000000004``, the usual form), read eight
    bytes at a time; -3 for anything else, which :func:`_hex` then decides."""
    if e - s != 18 or buf[np.uint64(s)] != 48 or (
            buf[np.uint64(s + 1)] != 120 and buf[np.uint64(s + 1)] != 88):
        return -3
    a = load8(words, s + 2) ^ _ZEROS
    b = load8(words, s + 10) ^ _ZEROS
    if ((((a & _LOW7) + _NINE_UP) | a) | (((b & _LOW7) + _NINE_UP) | b)) & _HIGH:
        return -3
    return int(np.int64((nibbles(a) << _U32) | nibbles(b)))


@njit(cache=True, nogil=True, inline="always")
def separator_marks(word: Any) -> Any:
    """The high bit of each byte of ``word`` that is a comma or a newline."""
    a = word ^ _COMMAS
    b = word ^ _NEWLINES
    return (~(((a & _LOW7) + _LOW7) | a | _LOW7)) | (~(((b & _LOW7) + _LOW7) | b | _LOW7))
