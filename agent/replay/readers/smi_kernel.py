"""The numba kernel that scans raw ``nvidia-smi --format=csv`` bytes into columns.

One pass over whole lines: find the ``,`` and newline separators eight bytes at a time,
parse numbers with an optional unit suffix, the timestamp to epoch nanoseconds and the
hex clock-event mask, map the identity field to a GPU id (an open-addressing table of
the identities' bytes, one per block; ids in order of first appearance), and flag bad
lines with their line numbers. It is pure and boring on purpose:
``tests/replay/test_nvidia_smi.py`` checks it against a plain-Python parser of the same
grammar (the module docstring of :mod:`agent.replay.readers.nvidia_smi`), and
``tests/replay/test_smi_kernel.py`` its pieces.

The usual shapes take quick paths that read eight bytes at a time
(:mod:`agent.replay.readers.words`): a number of at most 7 + 7 digits with one space
before its unit, a 16-digit mask, a timestamp whose minute is the previous one's.
Anything else takes the general path, which gives the same value where both apply.
Numbers take the general fast path when they are exact in float64 (at most 2**53 as an
integer mantissa and a power-of-ten scale of at most 22, so one IEEE division or product
gives the correctly rounded value ``float()`` gives); anything else is flagged SLOW and
re-parsed by Python, so the result never depends on the path.

Indices on the hot path are ``np.uint64`` (no negative-index check per access; every
offset here is at least 0), and :func:`scan` runs without reference counting. Measured
on 2 M rows, the scan alone: about 1.6x its speed for the second, 1.2x more for the
first.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
from numba import njit

from agent.replay.readers.words import (
    POW10,
    POW10_INT,
    first_marked,
    load8,
    low_bytes,
    quick_hex,
    quick_number,
    separator_marks,
)
from agent.sources.base import IntArray

K_IGNORE = 0
K_TIME = 1
K_KEY = 2
K_FLOAT = 3
K_HEX = 4

KEY_UUID = 1
KEY_PCI = 2
KEY_INDEX = 3

BAD_FIELDS = 1  # aux: fields found
BAD_TIME = 2  # aux: column
BAD_NUMBER = 3
BAD_UNIT = 4
BAD_KEY = 5
BAD_HEX = 6
TOO_MANY_GPUS = 7
BAD_LONG = 8  # a line longer than the most a block holds
SLOW = 99  # a number outside the exact fast path: Python parses that field

# state array slots, shared with the caller (cursors survive re-entry)
S_ROWS = 0
S_BAD = 1
S_NEW = 2
S_GPUS = 3
S_SLOW = 4

TABLE_BITS = 14
TABLE_SIZE = 1 << TABLE_BITS
MAX_GPUS = TABLE_SIZE // 2
KEY_MAX = 96
_HEX_DIGIT = np.full(256, 255, dtype=np.uint8)
_HEX_DIGIT[np.frombuffer(b"0123456789", np.uint8)] = np.arange(10)
_HEX_DIGIT[np.frombuffer(b"abcdef", np.uint8)] = np.arange(10, 16)
_HEX_DIGIT[np.frombuffer(b"ABCDEF", np.uint8)] = np.arange(10, 16)
_EXACT = 1 << 53
_NL = 10
_CR = 13
_SP = 32
_TAB = 9
# numba's option (a target option, not in its typed signature) to compile without NRT.
_NO_REFCOUNTS: dict[str, Any] = {"_nrt": False}
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)  # Fibonacci hashing
_U1 = np.uint64(1)


def new_table() -> tuple[IntArray, npt.NDArray[np.uint64], IntArray]:
    """An empty GPU table: (slots holding GPU ids, -1 free; identity bytes per GPU id,
    as little-endian words padded with zeros; their lengths)."""
    return (np.full(TABLE_SIZE, -1, dtype=np.int64),
            np.zeros((MAX_GPUS, KEY_MAX // 8), dtype=np.uint64),
            np.zeros(MAX_GPUS, dtype=np.int64))


@njit(cache=True, nogil=True, inline="always")
def _trim(buf: Any, s: int, e: int) -> tuple[int, int]:
    while s < e and (buf[np.uint64(s)] == _SP or buf[np.uint64(s)] == _TAB):
        s += 1
    while e > s and (buf[np.uint64(e - 1)] == _SP or buf[np.uint64(e - 1)] == _TAB):
        e -= 1
    return s, e


@njit(cache=True, nogil=True, inline="always")
def _is_unknown(buf: Any, s: int, e: int) -> bool:
    # "[N/A]", "[Not Supported]", "[Unknown Error]", "[GPU is lost]" ... and bare "N/A".
    if e - s >= 2 and buf[s] == 91 and buf[e - 1] == 93:
        return True
    return e - s == 3 and buf[s] == 78 and buf[s + 1] == 47 and buf[s + 2] == 65


@njit(cache=True, nogil=True)
def _number(buf: Any, s: int, e: int, units: Any, u0: int, ulen: int) -> tuple[int, float]:
    """(status, value) of a trimmed field: 0 ok, 1 unknown, else a BAD_* or SLOW code."""
    if s >= e:
        return BAD_NUMBER, 0.0
    if _is_unknown(buf, s, e):
        return 1, np.nan
    p = s
    negative = False
    if buf[p] == 43 or buf[p] == 45:  # + -
        negative = buf[p] == 45
        p += 1
    mant = 0
    digits = 0
    frac = 0
    slow = False
    while p < e and 48 <= buf[p] <= 57:
        if mant < _EXACT:
            mant = mant * 10 + (buf[p] - 48)
        else:
            slow = True
        digits += 1
        p += 1
    if p < e and buf[p] == 46:  # .
        p += 1
        while p < e and 48 <= buf[p] <= 57:
            if mant < _EXACT:
                mant = mant * 10 + (buf[p] - 48)
                frac += 1
            else:
                slow = True
            digits += 1
            p += 1
    if digits == 0:
        return BAD_NUMBER, 0.0
    exponent = 0
    if p < e and (buf[p] == 101 or buf[p] == 69):  # e E
        q = p + 1
        exp_negative = False
        if q < e and (buf[q] == 43 or buf[q] == 45):
            exp_negative = buf[q] == 45
            q += 1
        exp_digits = 0
        while q < e and 48 <= buf[q] <= 57:
            if exp_digits < 6:
                exponent = exponent * 10 + (buf[q] - 48)
            else:
                slow = True
            exp_digits += 1
            q += 1
        if exp_digits == 0:
            return BAD_NUMBER, 0.0
        if exp_negative:
            exponent = -exponent
        p = q
    if p < e:
        # A unit: one or more spaces, then exactly the column's unit.
        if ulen == 0 or buf[p] != _SP:
            return BAD_UNIT, 0.0
        while p < e and buf[p] == _SP:
            p += 1
        if e - p != ulen:
            return BAD_UNIT, 0.0
        for k in range(ulen):
            if buf[p + k] != units[u0 + k]:
                return BAD_UNIT, 0.0
    scale = frac - exponent
    if slow or mant > _EXACT or scale > 22 or scale < -22:
        return SLOW, 0.0
    if scale >= 0:
        value = mant / POW10[scale]
    else:
        if mant * POW10[-scale] > _EXACT:
            return SLOW, 0.0
        value = mant * POW10[-scale]
    return 0, -value if negative else value


@njit(cache=True, nogil=True, inline="always")
def _digits(buf: Any, s: int, n: int) -> int:
    v = 0
    for k in range(n):
        c = buf[np.uint64(s + k)]
        if c < 48 or c > 57:
            return -1
        v = v * 10 + (c - 48)
    return v


@njit(cache=True, nogil=True)
def _days_from_civil(y: int, m: int, d: int) -> int:
    # Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
    y -= 1 if m <= 2 else 0
    era = y // 400
    yoe = y - era * 400
    doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


@njit(cache=True, nogil=True)
def _minute_ns(buf: Any, s: int) -> int:
    """``YYYY/MM/DD HH:MM`` (or with ``-``) at ``s`` (16 bytes, which the caller has) to
    ns since the epoch; -1 if bad."""
    sep = buf[s + 4]
    if (sep != 47 and sep != 45) or buf[s + 7] != sep or buf[s + 10] != _SP:
        return -1
    if buf[s + 13] != 58:
        return -1
    year = _digits(buf, s, 4)
    month = _digits(buf, s + 5, 2)
    day = _digits(buf, s + 8, 2)
    hour = _digits(buf, s + 11, 2)
    minute = _digits(buf, s + 14, 2)
    if year < 1970 or year > 2200 or month < 1 or month > 12 or day < 1:
        return -1
    if hour < 0 or hour > 23 or minute < 0 or minute > 59:
        return -1
    leap = (year % 4 == 0 and year % 100 != 0) or year % 400 == 0
    mdays = 31
    if month == 2:
        mdays = 29 if leap else 28
    elif month == 4 or month == 6 or month == 9 or month == 11:
        mdays = 30
    if day > mdays:
        return -1
    days = _days_from_civil(year, month, day)
    return (days * 86400 + hour * 3600 + minute * 60) * 1_000_000_000


@njit(cache=True, nogil=True, inline="always")
def _second_ns(buf: Any, s: int, e: int) -> int:
    """``:SS[.f]`` at ``s + 16`` of a timestamp field ``buf[s:e]`` (at least 19 bytes) to
    ns into the minute; -1 if bad."""
    if buf[np.uint64(s + 16)] != 58:
        return -1
    second = _digits(buf, s + 17, 2)
    if second < 0 or second > 59:
        return -1
    n = e - s
    frac_ns = 0
    if n > 19:
        if buf[np.uint64(s + 19)] != 46 or n == 20 or n > 29:
            return -1
        f = _digits(buf, s + 20, n - 20)
        if f < 0:
            return -1
        frac_ns = f * POW10_INT[np.uint64(29 - n)]
    return second * 1_000_000_000 + frac_ns


@njit(cache=True, nogil=True)
def _timestamp(buf: Any, s: int, e: int) -> int:
    """``YYYY/MM/DD HH:MM:SS[.f]`` (or with ``-``) to ns since the epoch; -1 if bad."""
    if e - s < 19:
        return -1
    minute = _minute_ns(buf, s)
    if minute < 0:
        return -1
    rest = _second_ns(buf, s, e)
    return -1 if rest < 0 else minute + rest


@njit(cache=True, nogil=True)
def _hex(buf: Any, s: int, e: int) -> int:
    """``0x...`` (1 to 16 hex digits) to int64; -1 unknown; -2 bad."""
    if _is_unknown(buf, s, e):
        return -1
    if e - s < 3 or e - s > 18 or buf[s] != 48 or (buf[s + 1] != 120 and buf[s + 1] != 88):
        return -2
    v = np.uint64(0)
    for p in range(s + 2, e):
        d = _HEX_DIGIT[buf[p]]
        if d > 15:
            return -2
        v = (v << np.uint64(4)) | np.uint64(d)
    return int(np.int64(v))


@njit(cache=True, nogil=True)
def _valid_key(buf: Any, s: int, e: int, mode: int) -> bool:
    """An identity field of its kind: ``GPU-``/``MIG-`` then hex and dashes (UUID),
    hex, colons and dots (PCI bus id), or digits (index); at most KEY_MAX bytes."""
    if s >= e or e - s > KEY_MAX:
        return False
    start = s
    if mode == KEY_UUID:
        if e - s < 5 or buf[s + 3] != 45 or not (
            (buf[s] == 71 and buf[s + 1] == 80 and buf[s + 2] == 85)  # GPU
            or (buf[s] == 77 and buf[s + 1] == 73 and buf[s + 2] == 71)  # MIG
        ):
            return False
        start = s + 4
    for p in range(start, e):
        c = buf[p]
        digit = 48 <= c <= 57
        hexa = digit or (97 <= c <= 102) or (65 <= c <= 70)
        if mode == KEY_INDEX and not digit:
            return False
        if mode == KEY_UUID and not (hexa or c == 45):
            return False
        if mode == KEY_PCI and not (hexa or c == 58 or c == 46):
            return False
    return True


@njit(cache=True, nogil=True, inline="always")
def _lookup(words: Any, s: int, e: int, table: IntArray, key_words: Any,
            key_len: IntArray) -> tuple[int, int]:
    """(GPU id, slot) of an identity field; id -1 if unknown, with the free slot it
    would take. Known identities are recognised by comparing bytes (eight at a time),
    so only a new one needs validating."""
    n = e - s
    tail = load8(words, e - 8) if n >= 8 else load8(words, s) & low_bytes(n)
    h = (tail ^ np.uint64(n)) * _GOLDEN
    slot = int(np.int64(h >> np.uint64(64 - TABLE_BITS)))
    whole = n >> 3
    rest = low_bytes(n & 7)
    while True:
        gid = int(table[np.uint64(slot)])
        if gid < 0:
            return -1, slot
        gu = np.uint64(gid)
        if key_len[gu] == n:
            same = True
            for q in range(whole):
                if load8(words, s + 8 * q) != key_words[gu, np.uint64(q)]:
                    same = False
                    break
            if same and rest and (
                    load8(words, s + 8 * whole) & rest) != key_words[gu, np.uint64(whole)]:
                same = False
            if same:
                return gid, slot
        slot = (slot + 1) & (TABLE_SIZE - 1)


@njit(cache=True, nogil=True)
def _insert(words: Any, s: int, e: int, slot: int, table: IntArray, key_words: Any,
            key_len: IntArray, state: IntArray) -> int:
    gid = int(state[S_GPUS])
    table[slot] = gid
    n = e - s
    key_len[gid] = n
    for q in range((n + 7) >> 3):
        key_words[gid, q] = load8(words, s + 8 * q) & low_bytes(n - 8 * q)
    state[S_GPUS] += 1
    return gid


# Without the runtime's reference counts: every inlined helper that takes ``buf`` or
# ``words`` would otherwise count a reference up and down, atomically, around each field
# (four locked instructions per number); the kernel allocates nothing, so it needs none.
# Measured on 2 M rows: 1.6x the scan's speed.
@njit(cache=True, nogil=True, **_NO_REFCOUNTS)  # type: ignore[untyped-decorator]
def scan(
    buf: Any, words: Any, pos: int, end: int, line_no: int, max_line: int, kinds: IntArray,
    slots: IntArray, units: Any, unit_start: IntArray, unit_len: IntArray, unit_words: Any,
    key_mode: int, utc_offset_ns: int,
    table: IntArray, key_words: Any, key_len: IntArray, state: IntArray,
    out_ts: IntArray, out_gpu: IntArray, out_vals: Any, out_thr: IntArray, out_line: IntArray,
    bad_line: IntArray, bad_code: IntArray, bad_aux: IntArray, bad_off: IntArray,
    new_gpu: IntArray, new_off: IntArray,
    slow_row: IntArray, slow_col: IntArray, slow_off: IntArray, slow_line: IntArray,
) -> tuple[int, int, int]:
    """Scan whole lines of ``buf[pos:end]`` (the byte before ``end`` is a newline);
    ``words`` is the same buffer as uint64 words, with room past ``end``, in which the
    field separators are found eight bytes at a time; ``unit_words``: per column its
    unit after one space as a little-endian word (for :func:`quick_number`). A line of
    more than ``max_line`` bytes (its newline included) is bad (BAD_LONG), unparsed.

    Good rows go to ``out_*`` (``out_line``: their line numbers) at cursor
    ``state[S_ROWS]``; bad lines to ``bad_*`` at
    ``state[S_BAD]``; a GPU seen for the first time to ``new_*`` at ``state[S_NEW]``
    (its id and the offset of its line); a number off the exact fast path to
    ``slow_*`` at ``state[S_SLOW]`` (its row keeps NaN there until the caller parses
    it). Stops early, without recording it, at a bad line that starts with a
    lower-case letter: it may be a header (nvidia-smi field names are lower case),
    which the caller decides. Also stops (code 2) before a line when an output array
    is full, for the caller to grow them and call again.

    Returns:
        (offset of the next unscanned line, its line number, 0 done / 1 a lower-case
        bad line / 2 out of room).
    """
    ncols = kinds.shape[0]
    rows = state[S_ROWS]
    n_bad = state[S_BAD]
    n_new = state[S_NEW]
    n_slow = state[S_SLOW]
    # The separators' cursor: a word and the marks of its commas and newlines not yet
    # passed.
    at_word = pos >> 3
    marks = separator_marks(words[at_word]) & (~np.uint64(0) << np.uint64(8 * (pos & 7)))
    # The minute (``YYYY/MM/DD HH:MM``) of the last good timestamp, whose 16 bytes
    # recur on every line of a minute: matched, only the seconds are parsed.
    minute_a = np.uint64(0)
    minute_b = np.uint64(0)
    minute_value = -1
    stop = 0
    while pos < end:
        if (rows >= out_ts.shape[0] or n_bad >= bad_line.shape[0]
                or n_new >= new_gpu.shape[0] or n_slow + ncols >= slow_row.shape[0]):
            stop = 2
            break
        line_start = pos
        p = pos
        ts = -1
        gpu = 0 if key_mode == 0 else -1
        new_slot = -1
        new_s = 0
        new_e = 0
        thr = -1
        code = 0
        aux = 0
        c = 0
        slow_mark = n_slow
        while True:
            fs = p
            while marks == 0:
                at_word += 1
                marks = separator_marks(words[np.uint64(at_word)])
            p = at_word * 8 + first_marked(marks)
            marks &= marks - _U1
            cu = np.uint64(c)
            if c < ncols and code == 0 and kinds[cu] != K_IGNORE:
                fe = p
                if buf[np.uint64(p)] == _NL and fe > fs and buf[np.uint64(fe - 1)] == _CR:
                    fe -= 1
                s, e = _trim(buf, fs, fe)
                kind = kinds[cu]
                if kind == K_FLOAT:
                    ulen = unit_len[cu]
                    quick, value = quick_number(
                        buf, words, s, e, unit_words[cu], ulen + 1 if ulen else 0)
                    status = 0
                    if not quick:
                        status, value = _number(buf, s, e, units, unit_start[cu], ulen)
                    if status == SLOW:
                        slow_row[n_slow] = rows
                        slow_col[n_slow] = c
                        slow_off[n_slow] = line_start
                        slow_line[n_slow] = line_no
                        n_slow += 1
                        out_vals[slots[c], rows] = np.nan
                    elif status > 1:
                        code = status
                        aux = c
                    else:
                        out_vals[slots[cu], np.uint64(rows)] = value
                elif kind == K_TIME:
                    ts = -1
                    if e - s >= 19:
                        head_a = load8(words, s)
                        head_b = load8(words, s + 8)
                        same = minute_value >= 0 and head_a == minute_a and head_b == minute_b
                        if not same:
                            minute = _minute_ns(buf, s)
                            if minute >= 0:
                                minute_value = minute
                                minute_a = head_a
                                minute_b = head_b
                                same = True
                        if same:
                            rest = _second_ns(buf, s, e)
                            if rest >= 0:
                                ts = minute_value + rest
                    if ts < 0:
                        code = BAD_TIME
                        aux = c
                elif kind == K_KEY:
                    gpu, slot = _lookup(words, s, e, table, key_words, key_len)
                    if gpu < 0:
                        if not _valid_key(buf, s, e, key_mode):
                            code = BAD_KEY
                            aux = c
                        elif state[S_GPUS] >= MAX_GPUS:
                            code = TOO_MANY_GPUS
                        else:
                            new_s, new_e, new_slot = s, e, slot
                elif kind == K_HEX:
                    thr = quick_hex(buf, words, s, e)
                    if thr == -3:
                        thr = _hex(buf, s, e)
                    if thr == -2:
                        code = BAD_HEX
                        aux = c
            c += 1
            if buf[np.uint64(p)] == _NL:
                break
            p += 1
        pos = p + 1
        long_line = pos - line_start > max_line
        if long_line:
            code = BAD_LONG
            aux = 0
            new_slot = -1
        elif c == 1:
            s, e = _trim(buf, line_start, p)
            if e == s or (e == s + 1 and buf[s] == _CR):
                line_no += 1
                continue
        if code == 0 and c != ncols:
            code = BAD_FIELDS
            aux = c
        # A GPU is known from its first good line (no identity column: one GPU).
        is_new = False
        if code == 0 and new_slot >= 0:
            if n_slow > slow_mark:
                # A new GPU whose line may still turn out bad: the caller registers it
                # (or not) once its numbers are parsed; its row's GPU is -1 until then.
                gpu = -1
            else:
                gpu = _insert(words, new_s, new_e, new_slot, table, key_words, key_len, state)
                is_new = True
        elif code == 0 and key_mode == 0 and state[S_GPUS] == 0:
            state[S_GPUS] = 1
            is_new = True
        if is_new:
            new_gpu[n_new] = gpu
            new_off[n_new] = line_start
            n_new += 1
        if code != 0:
            n_slow = slow_mark  # a bad row has no field left to parse
            if 97 <= buf[line_start] <= 122 and not long_line:
                pos = line_start
                stop = 1
                break
            bad_line[n_bad] = line_no
            bad_code[n_bad] = code
            bad_aux[n_bad] = aux
            bad_off[n_bad] = line_start
            n_bad += 1
        else:
            ru = np.uint64(rows)
            out_ts[ru] = ts - utc_offset_ns if ts >= 0 else -1
            out_gpu[ru] = gpu
            out_thr[ru] = thr
            out_line[ru] = line_no
            rows += 1
        line_no += 1
    state[S_ROWS] = rows
    state[S_BAD] = n_bad
    state[S_NEW] = n_new
    state[S_SLOW] = n_slow
    return pos, line_no, stop
