"""The numba kernel that scans raw ``nvidia-smi --format=csv`` bytes into columns.

One pass over a block of whole lines: split lines and ``", "``-separated fields, parse
numbers with an optional unit suffix, the timestamp to epoch nanoseconds and the hex
clock-event mask, map the identity field to a GPU id (an open-addressing table of the
identities' bytes, kept across blocks; ids in order of first appearance), and flag bad
lines with their line numbers. It is pure and boring on purpose:
``tests/replay/test_nvidia_smi.py`` checks it against a plain-Python parser of the same
grammar (the module docstring of :mod:`agent.replay.readers.nvidia_smi`).

Numbers take the fast path when they are exact in float64 (at most 2**53 as an integer
mantissa and a power-of-ten scale of at most 22, so one IEEE division or product gives
the correctly rounded value ``float()`` gives); anything else is flagged SLOW and
re-parsed by Python, so the result never depends on the path.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
from numba import njit

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
_POW10 = np.array([10.0**k for k in range(23)])
_HEX_DIGIT = np.full(256, 255, dtype=np.uint8)
_HEX_DIGIT[np.frombuffer(b"0123456789", np.uint8)] = np.arange(10)
_HEX_DIGIT[np.frombuffer(b"abcdef", np.uint8)] = np.arange(10, 16)
_HEX_DIGIT[np.frombuffer(b"ABCDEF", np.uint8)] = np.arange(10, 16)
_EXACT = 1 << 53
_NL = 10
_CR = 13
_SP = 32
_TAB = 9


def new_table() -> tuple[IntArray, npt.NDArray[np.uint8], IntArray]:
    """An empty GPU table: (slots holding GPU ids, -1 free; identity bytes per GPU id;
    their lengths)."""
    return (np.full(TABLE_SIZE, -1, dtype=np.int64),
            np.zeros((MAX_GPUS, KEY_MAX), dtype=np.uint8), np.zeros(MAX_GPUS, dtype=np.int64))


@njit(cache=True, nogil=True)
def _trim(buf: Any, s: int, e: int) -> tuple[int, int]:
    while s < e and (buf[s] == _SP or buf[s] == _TAB):
        s += 1
    while e > s and (buf[e - 1] == _SP or buf[e - 1] == _TAB):
        e -= 1
    return s, e


@njit(cache=True, nogil=True)
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
        value = mant / _POW10[scale]
    else:
        if mant * _POW10[-scale] > _EXACT:
            return SLOW, 0.0
        value = mant * _POW10[-scale]
    return 0, -value if negative else value


@njit(cache=True, nogil=True)
def _digits(buf: Any, s: int, n: int) -> int:
    v = 0
    for k in range(n):
        c = buf[s + k]
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
def _timestamp(buf: Any, s: int, e: int) -> int:
    """``YYYY/MM/DD HH:MM:SS[.f]`` (or with ``-``) to ns since the epoch; -1 if bad."""
    n = e - s
    if n < 19:
        return -1
    sep = buf[s + 4]
    if (sep != 47 and sep != 45) or buf[s + 7] != sep or buf[s + 10] != _SP:
        return -1
    if buf[s + 13] != 58 or buf[s + 16] != 58:
        return -1
    year = _digits(buf, s, 4)
    month = _digits(buf, s + 5, 2)
    day = _digits(buf, s + 8, 2)
    hour = _digits(buf, s + 11, 2)
    minute = _digits(buf, s + 14, 2)
    second = _digits(buf, s + 17, 2)
    if year < 1970 or year > 2200 or month < 1 or month > 12 or day < 1:
        return -1
    if hour < 0 or hour > 23 or minute < 0 or minute > 59 or second < 0 or second > 59:
        return -1
    leap = (year % 4 == 0 and year % 100 != 0) or year % 400 == 0
    mdays = 31
    if month == 2:
        mdays = 29 if leap else 28
    elif month == 4 or month == 6 or month == 9 or month == 11:
        mdays = 30
    if day > mdays:
        return -1
    frac_ns = 0
    if n > 19:
        if buf[s + 19] != 46 or n == 20 or n > 29:
            return -1
        f = _digits(buf, s + 20, n - 20)
        if f < 0:
            return -1
        frac_ns = f * 10 ** (29 - n)
    days = _days_from_civil(year, month, day)
    return ((days * 86400 + hour * 3600 + minute * 60 + second) * 1_000_000_000) + frac_ns


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


@njit(cache=True, nogil=True)
def _lookup(buf: Any, s: int, e: int, table: IntArray, key_text: Any,
            key_len: IntArray) -> tuple[int, int]:
    """(GPU id, slot) of an identity field; id -1 if unknown, with the free slot it
    would take. Known identities are recognised by comparing bytes, so only a new one
    needs validating."""
    n = e - s
    word = np.uint64(n)
    for p in range(max(s, e - 8), e):
        word = (word << np.uint64(8)) | np.uint64(buf[p])
    slot = int(np.int64((word * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(64 - TABLE_BITS)))
    while True:
        gid = int(table[slot])
        if gid < 0:
            return -1, slot
        if key_len[gid] == n:
            same = True
            for q in range(n):
                if key_text[gid, q] != buf[s + q]:
                    same = False
                    break
            if same:
                return gid, slot
        slot = (slot + 1) & (TABLE_SIZE - 1)


@njit(cache=True, nogil=True)
def _insert(buf: Any, s: int, e: int, slot: int, table: IntArray, key_text: Any,
            key_len: IntArray, state: IntArray) -> int:
    gid = int(state[S_GPUS])
    table[slot] = gid
    key_len[gid] = e - s
    for q in range(e - s):
        key_text[gid, q] = buf[s + q]
    state[S_GPUS] += 1
    return gid


@njit(cache=True, nogil=True)
def scan(
    buf: Any, pos: int, end: int, line_no: int, kinds: IntArray, slots: IntArray,
    units: Any, unit_start: IntArray, unit_len: IntArray, key_mode: int, utc_offset_ns: int,
    table: IntArray, key_text: Any, key_len: IntArray, state: IntArray,
    out_ts: IntArray, out_gpu: IntArray, out_vals: Any, out_thr: IntArray, out_line: IntArray,
    bad_line: IntArray, bad_code: IntArray, bad_aux: IntArray, bad_off: IntArray,
    new_gpu: IntArray, new_off: IntArray,
    slow_row: IntArray, slow_col: IntArray, slow_off: IntArray, slow_line: IntArray,
) -> tuple[int, int, int]:
    """Scan whole lines of ``buf[pos:end]`` (the byte before ``end`` is a newline).

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
    while pos < end:
        if (state[S_ROWS] >= out_ts.shape[0] or state[S_BAD] >= bad_line.shape[0]
                or state[S_NEW] >= new_gpu.shape[0]
                or state[S_SLOW] + ncols >= slow_row.shape[0]):
            return pos, line_no, 2
        line_start = pos
        p = pos
        row = state[S_ROWS]
        ts = -1
        gpu = 0 if key_mode == 0 else -1
        new_slot = -1
        new_s = 0
        new_e = 0
        thr = -1
        code = 0
        aux = 0
        c = 0
        slow_mark = state[S_SLOW]
        while True:
            fs = p
            while buf[p] != 44 and buf[p] != _NL:
                p += 1
            if c < ncols and code == 0 and kinds[c] != K_IGNORE:
                fe = p
                if buf[p] == _NL and fe > fs and buf[fe - 1] == _CR:
                    fe -= 1
                s, e = _trim(buf, fs, fe)
                kind = kinds[c]
                if kind == K_FLOAT:
                    status, value = _number(buf, s, e, units, unit_start[c], unit_len[c])
                    if status == SLOW:
                        k = state[S_SLOW]
                        slow_row[k] = row
                        slow_col[k] = c
                        slow_off[k] = line_start
                        slow_line[k] = line_no
                        state[S_SLOW] += 1
                        out_vals[slots[c], row] = np.nan
                    elif status > 1:
                        code = status
                        aux = c
                    else:
                        out_vals[slots[c], row] = value
                elif kind == K_TIME:
                    ts = _timestamp(buf, s, e)
                    if ts < 0:
                        code = BAD_TIME
                        aux = c
                elif kind == K_KEY:
                    gpu, slot = _lookup(buf, s, e, table, key_text, key_len)
                    if gpu < 0:
                        if not _valid_key(buf, s, e, key_mode):
                            code = BAD_KEY
                            aux = c
                        elif state[S_GPUS] >= MAX_GPUS:
                            code = TOO_MANY_GPUS
                        else:
                            new_s, new_e, new_slot = s, e, slot
                elif kind == K_HEX:
                    thr = _hex(buf, s, e)
                    if thr == -2:
                        code = BAD_HEX
                        aux = c
            c += 1
            if buf[p] == _NL:
                break
            p += 1
        pos = p + 1
        if c == 1:
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
            if state[S_SLOW] > slow_mark:
                # A new GPU whose line may still turn out bad: the caller registers it
                # (or not) once its numbers are parsed; its row's GPU is -1 until then.
                gpu = -1
            else:
                gpu = _insert(buf, new_s, new_e, new_slot, table, key_text, key_len, state)
                is_new = True
        elif code == 0 and key_mode == 0 and state[S_GPUS] == 0:
            state[S_GPUS] = 1
            is_new = True
        if is_new:
            new_gpu[state[S_NEW]] = gpu
            new_off[state[S_NEW]] = line_start
            state[S_NEW] += 1
        if code != 0:
            state[S_SLOW] = slow_mark  # a bad row has no field left to parse
            if 97 <= buf[line_start] <= 122:
                return line_start, line_no, 1
            k = state[S_BAD]
            bad_line[k] = line_no
            bad_code[k] = code
            bad_aux[k] = aux
            bad_off[k] = line_start
            state[S_BAD] += 1
        else:
            out_ts[row] = ts - utc_offset_ns if ts >= 0 else -1
            out_gpu[row] = gpu
            out_thr[row] = thr
            out_line[row] = line_no
            state[S_ROWS] += 1
        line_no += 1
    return pos, line_no, 0
