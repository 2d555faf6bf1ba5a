"""The eight-bytes-at-a-time pieces of the nvidia-smi kernel (agent/replay/readers/
words.py), its GPU table and its timestamps, each against a plain-Python reference and
analytic cases (the whole kernel is checked against the reference parser in
tests/replay/test_nvidia_smi.py)."""

from __future__ import annotations

import calendar
import datetime as dt
import math
from pathlib import Path

import numpy as np
import numpy.typing as npt
from hypothesis import given, settings
from hypothesis import strategies as st
from numba import jit

from agent.replay.readers import smi_kernel as k
from agent.replay.readers import words as w8
from agent.replay.readers.nvidia_smi import parse_block, plan_log, python_number


def words_of(raw: bytes) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.uint8]]:
    w = w8.padded_words(raw)
    return w, w.view(np.uint8)


def test_load8_reads_any_offset_little_endian() -> None:
    raw = bytes(range(1, 40))
    w, _ = words_of(raw)
    for p in range(len(raw)):
        assert int(w8.load8(w, p)) == int.from_bytes(raw[p:p + 8].ljust(8, b"\0"), "little")


def test_first_marked_byte() -> None:
    assert w8.first_marked(np.uint64(0)) == 8
    assert w8.first_marked(np.uint64(0x80)) == 0
    assert w8.first_marked(np.uint64(0x8000)) == 1
    assert w8.first_marked(np.uint64(0x80 << 56)) == 7
    assert w8.first_marked(np.uint64(0x8080_0000_0000_8000)) == 1
    rng = np.random.default_rng(1)
    for _ in range(500):
        marked = rng.random(8) < 0.3
        marks = sum(0x80 << (8 * i) for i in range(8) if marked[i])
        want = int(np.argmax(marked)) if marked.any() else 8
        assert w8.first_marked(np.uint64(marks)) == want


def reference_digits(text: bytes, n: int) -> tuple[int, int]:
    count = 0
    while count < n and 48 <= text[count] <= 57:
        count += 1
    return count, int(text[:count]) if 1 <= count <= 7 else 0


@settings(max_examples=400, deadline=None)
@given(st.binary(min_size=8, max_size=8) | st.text("0123456789. %xe", min_size=8,
                                                    max_size=8).map(str.encode),
       st.integers(1, 8))
def test_leading_digits_match_python(text: bytes, n: int) -> None:
    w, _ = words_of(text)
    assert w8.leading_digits(np.uint64(w8.load8(w, 0)), n) == reference_digits(text, n)


def test_leading_digits_analytic() -> None:
    for text, n, want in ((b"1980 MHz", 8, (4, 1980)), (b"0000001x", 8, (7, 1)),
                          (b"12345678", 8, (8, 0)), (b"97 %    ", 2, (2, 97)),
                          (b"97 %    ", 1, (1, 9)), (b"x1234567", 8, (0, 0))):
        w, _ = words_of(text)
        assert w8.leading_digits(np.uint64(w8.load8(w, 0)), n) == want


def quick(text: str, unit: str) -> tuple[bool, float]:
    raw = text.encode()
    w, buf = words_of(raw)
    unit_word = np.uint64(int.from_bytes(b" " + unit.encode(), "little") if unit else 0)
    ok, value = w8.quick_number(buf, w, 0, len(raw), unit_word, len(unit) + 1 if unit else 0)
    return bool(ok), float(value)


def test_quick_numbers_analytic() -> None:
    assert quick("1980 MHz", "MHz") == (True, 1980.0)
    assert quick("538.45 W", "W") == (True, 538.45)
    assert quick("0.5 W", "W") == (True, 0.5)
    assert quick("97", "%") == (True, 97.0)
    assert quick("1234567.1234567", "") == (True, 1234567.1234567)
    # Left to the general parser: any other shape.
    for text in ("97  %", "97 W", "97.", ".5", "+97", "1e3", "12345678", "[N/A]", "97 %x",
                 "1.12345678", ""):
        assert quick(text, "%") == (False, 0.0), text


@settings(max_examples=500, deadline=None)
@given(st.text("0123456789. %MHzWe+-[]NA/x", max_size=16), st.sampled_from(["", "%", "W",
                                                                           "MHz"]))
def test_quick_numbers_equal_pythons_where_taken(text: str, unit: str) -> None:
    ok, value = quick(text, unit)
    if ok:
        want = python_number(text, unit)
        assert want is not None
        assert value == want
        assert math.copysign(1, value) == math.copysign(1, want)


def hexa(text: str) -> int:
    raw = text.encode()
    w, buf = words_of(raw)
    return int(w8.quick_hex(buf, w, 0, len(raw)))


def test_quick_hex() -> None:
    assert hexa("0x0000000000000004") == 4
    assert hexa("0X1234567890123456") == 0x1234567890123456
    assert hexa("0x9999999999999999") == 0x9999999999999999 - (1 << 64)
    for text in ("0x000000000000000a", "0x00000000000004", "1x0000000000000004",
                 "0x000000000000000 ", "[N/A]"):
        assert hexa(text) == -3, text  # left to the general parser
    rng = np.random.default_rng(2)
    for _ in range(300):
        digits = "".join(str(d) for d in rng.integers(0, 10, 16))
        v = int(digits, 16)
        assert hexa("0x" + digits) == (v - (1 << 64) if v >= 1 << 63 else v)


def test_gpu_table_finds_what_it_holds_and_nothing_else() -> None:
    table, key_words, key_len = k.new_table()
    state = np.zeros(5, dtype=np.int64)
    rng = np.random.default_rng(3)
    keys = [bytes(rng.integers(33, 127, int(n)).astype(np.uint8))
            for n in rng.integers(1, k.KEY_MAX + 1, 300)]
    keys += [b"GPU-" + b"0" * 28 + tail for tail in (b"aaaaaaaa", b"baaaaaaa")]  # same last 8
    keys = list(dict.fromkeys(keys))
    for i, key in enumerate(keys):
        w, _ = words_of(key)
        gid, slot = k._lookup(w, 0, len(key), table, key_words, key_len)
        assert gid == -1
        assert k._insert(w, 0, len(key), slot, table, key_words, key_len, state) == i
    for i, key in enumerate(keys):
        w, _ = words_of(b"  " + key + b", x")  # at an odd offset, among other bytes
        assert k._lookup(w, 2, 2 + len(key), table, key_words, key_len)[0] == i
        other = bytearray(key)
        other[len(key) // 2] ^= 1
        if bytes(other) not in keys:
            w, _ = words_of(bytes(other))
            assert k._lookup(w, 0, len(other), table, key_words, key_len)[0] == -1


def reference_time(text: str) -> int:
    try:
        date, clock = text.split(" ")
        sep = date[4]
        y, mo, d = (int(x) for x in date.split(sep))
        hms, _, frac = clock.partition(".")
        h, mi, s = (int(x) for x in hms.split(":"))
        dt.datetime(y, mo, d, h, mi, s)
        if not 1970 <= y <= 2200 or (frac and not frac.isdigit()) or len(frac) > 9:
            return -1
        if len(date) != 10 or len(hms) != 8 or (clock.count(".") and not frac):
            return -1
        return calendar.timegm((y, mo, d, h, mi, s)) * 10**9 + int(frac.ljust(9, "0") or 0)
    except (ValueError, IndexError):
        return -1


def test_timestamps_analytic_and_against_python() -> None:
    cases = ["2026/11/28 12:00:00.105", "2024/02/29 23:59:59.999999999", "2023/02/29 00:00:00",
             "2026-11-28 12:00:00", "2026/11/28 12:00:60", "2026/11/28 24:00:00",
             "2026/13/28 12:00:00", "2026/11/28 12:00:00.", "2026/11/28 12:00:00.1234567890",
             "1969/12/31 23:59:59", "2026/11/28T12:00:00", "2026/11-28 12:00:00"]
    for text in cases:
        raw = text.encode()
        _, buf = words_of(raw)
        assert k._timestamp(buf, 0, len(raw)) == reference_time(text), text
    assert k._timestamp(words_of(b"1970/01/01 00:00:01.5")[1], 0, 21) == 1_500_000_000


def test_separator_marks_and_byte_masks() -> None:
    rng = np.random.default_rng(4)
    for _ in range(300):
        raw = bytes(rng.choice(np.frombuffer(b"a,\n 0\x8c\xac\x0a\x2c\xff", np.uint8), 8))
        word = np.uint64(int.from_bytes(raw, "little"))
        want = sum(0x80 << (8 * i) for i, b in enumerate(raw) if b in (44, 10))
        assert int(w8.separator_marks(word)) == want
    assert [int(w8.low_bytes(n)) for n in (0, 1, 7, 8)] == [0, 0xFF, (1 << 56) - 1,
                                                            (1 << 64) - 1]
    assert int(w8.nibbles(np.uint64(int.from_bytes(bytes([1, 2, 3, 4, 5, 6, 7, 15]),
                                                    "little")))) == 0x1234567F


def test_scan_counts_no_references(tmp_path: Path) -> None:
    """The scan runs without the runtime's reference counts: with them, each inlined
    helper taking the buffer counts its references up and down around every field (locked
    instructions that cost the scan about 40% of its time). A fresh, uncached compile of
    the same function with the same options must call neither NRT_incref nor NRT_decref
    in its own body."""
    log = tmp_path / "gpu.csv"
    log.write_text("timestamp, uuid, utilization.gpu [%], power.draw [W]\n"
                   "2026/11/28 12:00:00.105, GPU-0a1b, 95 %, 612.34 W\n")
    plan = plan_log(log)
    parse_block(plan, 0, plan.header)
    sig = k.scan.signatures[0]
    fresh = jit(**k.scan.targetoptions)(k.scan.py_func)
    fresh.compile(sig)
    ir = fresh.inspect_llvm(sig)
    body = ir.split("define ", 2)[1]  # scan itself, before its callees
    assert "smi_kernel4scan" in body.split("\n", 1)[0]
    assert "@NRT_incref(" not in body
    assert "@NRT_decref(" not in body
