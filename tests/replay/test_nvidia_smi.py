"""The nvidia-smi CSV reader: real formats, bad rows with exact line numbers, the numba
kernel against a plain-Python parser of the same grammar, and fuzzing.

Fixtures are written in the format nvidia-smi prints (``nvidia-smi --help-query-gpu``
of driver 535; logs in the NeSI GPU-monitoring guide, ``timestamp, utilization.gpu
[%], ...`` / ``2024/03/13 07:04:28.836, 0, 0, ...`` for ``nounits``, and in the fast.ai
GPU notes, ``index, timestamp, power.draw [W], clocks.current.sm [MHz]`` /
``0, 2019/08/23 14:54:47.307, 208.36 W, 1545 MHz``; ``[N/A]``/``[Not Supported]`` as
nvidia-smi prints unsupported fields; throttle masks as ``0x0000000000000004``).
"""

from __future__ import annotations

import calendar
import math
import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.replay.engine import ReplayEngine, ReplayOptions
from agent.replay.readers.base import ReplayError
from agent.replay.readers.nvidia_smi import COLUMNS, NvidiaSmiReader, parse_header

U0 = "GPU-5b4e07f6-3a86-4340-039d-25f2a83cdc43"
U1 = "GPU-c2f76b33-7953-256e-8f33-1343419b1a1c"
U2 = "GPU-34319582-d595-d1c7-d1d2-179bcfa61660"
HEADER = ("timestamp, index, uuid, name, pci.bus_id, utilization.gpu [%], "
          "clocks.current.sm [MHz], clocks.max.sm [MHz], power.draw [W], "
          "clocks_throttle_reasons.active")
WITH_UNITS = f"""{HEADER}
2026/11/28 12:00:00.105, 0, {U0}, NVIDIA H100 80GB HBM3, 00000000:18:00.0, 97 %, 1980 MHz, 1980 MHz, 612.34 W, 0x0000000000000000
2026/11/28 12:00:00.112, 1, {U1}, NVIDIA A100-SXM4-80GB, 00000000:2A:00.0, 88 %, 1410 MHz, 1410 MHz, [N/A], 0x0000000000000004
2026/11/28 12:00:01.106, 0, {U0}, NVIDIA H100 80GB HBM3, 00000000:18:00.0, 95 %, 1965 MHz, 1980 MHz, 598.10 W, 0x0000000000000000
2026/11/28 12:00:01.113, 1, {U1}, NVIDIA A100-SXM4-80GB, 00000000:2A:00.0, [Not Supported], 1395 MHz, 1410 MHz, 299.00 W, 0x0000000000000004
"""  # noqa: E501
NOUNITS = f"""{HEADER}
2026/11/28 12:00:00.105, 0, {U0}, NVIDIA H100 80GB HBM3, 00000000:18:00.0, 97, 1980, 1980, 612.34, 0x0000000000000000
2026/11/28 12:00:00.112, 1, {U1}, NVIDIA A100-SXM4-80GB, 00000000:2A:00.0, 88, 1410, 1410, [N/A], 0x0000000000000004
2026/11/28 12:00:01.106, 0, {U0}, NVIDIA H100 80GB HBM3, 00000000:18:00.0, 95, 1965, 1980, 598.10, 0x0000000000000000
2026/11/28 12:00:01.113, 1, {U1}, NVIDIA A100-SXM4-80GB, 00000000:2A:00.0, [Not Supported], 1395, 1410, 299.00, 0x0000000000000004
"""  # noqa: E501
T0 = calendar.timegm((2026, 11, 28, 12, 0, 0)) * 10**9


def write(tmp: Path, text: str | bytes, name: str = "gpu.csv") -> Path:
    path = tmp / name
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


def read_all(path: Path, **kwargs: object) -> tuple[dict[str, np.ndarray], list, list]:  # type: ignore[type-arg]
    reader = NvidiaSmiReader(path, **kwargs)  # type: ignore[arg-type]
    chunks = list(reader.chunks())
    gpus = list(chunks[-1].gpus)
    keys = np.array([gpus[g].key for c in chunks for g in c.gpu.tolist()], dtype=object)
    out = {"key": keys, "ts": np.concatenate([c.timestamp_ns for c in chunks])}
    for name in ("sm_clock_mhz", "gpu_util_pct", "power_mw"):
        if any(name in c.fields for c in chunks):
            out[name] = np.concatenate([c.fields.get(name, np.full(c.rows, np.nan))
                                        for c in chunks])
    if any(c.throttle_reasons is not None for c in chunks):
        out["throttle"] = np.concatenate([c.throttle_reasons if c.throttle_reasons is not None
                                          else np.full(c.rows, -1) for c in chunks])
    bad = [b for c in chunks for b in c.bad]
    return out, gpus, bad


def test_with_units_fixture(tmp_path: Path) -> None:
    cols, gpus, bad = read_all(write(tmp_path, WITH_UNITS))
    assert bad == []
    assert [g.key for g in gpus] == [U0, U1]
    assert [g.name for g in gpus] == ["NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-80GB"]
    assert [g.index for g in gpus] == [0, 1]
    assert [g.max_sm_clock_mhz for g in gpus] == [1980.0, 1410.0]
    assert list(cols["key"]) == [U0, U1, U0, U1]
    assert cols["ts"].tolist() == [T0 + 105_000_000, T0 + 112_000_000, T0 + 1_106_000_000,
                                   T0 + 1_113_000_000]
    assert cols["sm_clock_mhz"].tolist() == [1980.0, 1410.0, 1965.0, 1395.0]
    np.testing.assert_array_equal(cols["gpu_util_pct"], [97.0, 88.0, 95.0, np.nan])
    np.testing.assert_array_equal(cols["power_mw"], [612.34 * 1000, np.nan, 598.10 * 1000,
                                                     299.0 * 1000])
    assert cols["throttle"].tolist() == [0, 4, 0, 4]


def test_nounits_gives_the_same_columns(tmp_path: Path) -> None:
    a, _, _ = read_all(write(tmp_path, WITH_UNITS, "a.csv"))
    b, _, bad = read_all(write(tmp_path, NOUNITS, "b.csv"))
    assert bad == []
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])


def test_renamed_throttle_column_and_crlf(tmp_path: Path) -> None:
    text = WITH_UNITS.replace("clocks_throttle_reasons.active", "clocks_event_reasons.active")
    cols, _, bad = read_all(write(tmp_path, text.replace("\n", "\r\n")))
    assert bad == []
    assert cols["throttle"].tolist() == [0, 4, 0, 4]


def test_bad_rows_have_exact_line_numbers(tmp_path: Path) -> None:
    lines = WITH_UNITS.splitlines()
    text = "\n".join([
        lines[0], lines[1],
        "garbage line with no commas",  # 3: lower case: looked at as a possible header
        "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.",  # 4
        lines[2].replace("1410 MHz, 1410", "x410 MHz, 1410"),  # 5: bad number
        lines[3].replace("1965 MHz", "1965 kHz"),  # 6: bad unit
        "",  # 7: blank: skipped silently
        "\x00\xff\xfe binary \x01",  # 8
        lines[4].replace(U1, "GPU-zz"),  # 9: bad identity
        lines[3][:-30],  # 10: fields missing
        "2026/13/28 12:00:02.000" + lines[3][23:],  # 11: month 13
        lines[3].replace("0x0000000000000000", "0xZZ"),  # 12: bad mask
        lines[4] + ", extra",  # 13: a field too many
        lines[4][:40],  # 14: the last line, cut off (no newline)
    ])
    cols, _, bad = read_all(write(tmp_path, text))
    assert [b.line for b in bad] == [3, 4, 5, 6, 8, 9, 10, 11, 12, 13, 14]
    reasons = {b.line: b.reason for b in bad}
    assert reasons[5] == "bad number in column 7"
    assert reasons[6] == "bad unit in column 7"
    assert reasons[9] == "bad GPU identity in column 3"
    assert reasons[10] == "expected 10 fields, found 8"
    assert reasons[11] == "bad timestamp in column 1"
    assert reasons[14].startswith("truncated last line")
    assert list(cols["key"]) == [U0]


def test_gpu_appearing_mid_file_and_repeated_header(tmp_path: Path) -> None:
    later = (f"2026/11/28 12:00:02.117, 2, {U2}, NVIDIA H100 80GB HBM3, 00000000:3B:00.0, "
             "50 %, 1755 MHz, 1980 MHz, 400.00 W, 0x0000000000000000")
    # nvidia-smi restarted with a different query, appending to the same log.
    other = "timestamp, uuid, power.draw [W], utilization.gpu [%], clocks.sm [MHz]"
    text = (WITH_UNITS + later + "\n" + HEADER + "\n" + WITH_UNITS.splitlines()[1] + "\n"
            + other + f"\n2026/11/28 12:00:03.000, {U0}, 500.00 W, 60 %, 1800 MHz\n")
    cols, gpus, bad = read_all(write(tmp_path, text), block_bytes=200)
    assert bad == []
    assert [g.key for g in gpus] == [U0, U1, U2]
    assert list(cols["key"]) == [U0, U1, U0, U1, U2, U0, U0]
    assert cols["power_mw"][-1] == 500_000.0
    assert cols["gpu_util_pct"][-1] == 60.0
    assert cols["sm_clock_mhz"][-1] == 1800.0


def test_columns_missing_and_no_timestamp(tmp_path: Path) -> None:
    text = "index, utilization.gpu [%]\n0, 90 %\n1, 80 %\n0, 91 %\n1, 81 %\n"
    with pytest.raises(ReplayError, match="--interval-hint"):
        read_all(write(tmp_path, text))
    cols, gpus, _ = read_all(write(tmp_path, text), interval_hint_s=2.0)
    assert [g.key for g in gpus] == ["index:0", "index:1"]
    assert "sm_clock_mhz" not in cols
    assert cols["ts"].tolist() == [0, 0, 2_000_000_000, 2_000_000_000]


def test_whole_file_problems_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ReplayError, match="header"):
        read_all(write(tmp_path, WITH_UNITS.split("\n", 1)[1]))
    with pytest.raises(ReplayError, match=r"\[MHz\]"):
        read_all(write(tmp_path, "timestamp, clocks.sm [kHz]\n"))
    with pytest.raises(ReplayError, match="cannot open"):
        read_all(tmp_path / "missing.csv")


def test_utc_offset_and_slow_numbers(tmp_path: Path) -> None:
    text = (WITH_UNITS.splitlines()[0] + "\n" + WITH_UNITS.splitlines()[1]
            .replace("612.34 W", "612.340000000000000001 W").replace("97 %", "9.7e1 %") + "\n")
    cols, _, bad = read_all(write(tmp_path, text), utc_offset_s=3600.0)
    assert bad == []
    assert cols["ts"][0] == T0 + 105_000_000 - 3600 * 10**9
    assert cols["power_mw"][0] == float("612.340000000000000001") * 1000
    assert cols["gpu_util_pct"][0] == 97.0


def test_overlong_line_is_skipped(tmp_path: Path) -> None:
    lines = WITH_UNITS.splitlines()
    text = "\n".join([lines[0], lines[1], "x" * 5000, lines[2]]) + "\n"
    cols, _, bad = read_all(write(tmp_path, text), block_bytes=1024)
    assert [b.line for b in bad] == [3]
    assert "longer than" in bad[0].reason
    assert len(cols["key"]) == 2


# --- a plain-Python parser of the grammar in agent/replay/readers/nvidia_smi.py ---------------

_NUM = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?", re.ASCII)
_TS = re.compile(r"(\d{4})([/-])(\d{2})\2(\d{2}) (\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?",
                 re.ASCII)
_KEYS = {"uuid": re.compile(r"(?:GPU|MIG)-[0-9a-fA-F-]+"), "pci": re.compile(r"[0-9a-fA-F:.]+"),
         "index": re.compile(r"[0-9]+")}


def _value(text: bytes, unit: str) -> float | None:
    t = text.strip(b" \t").decode("latin-1")
    if t == "N/A" or (len(t) >= 2 and t[0] == "[" and t[-1] == "]"):
        return math.nan
    m = _NUM.match(t)
    if m is None:
        return None
    rest = t[m.end():]
    if rest and not (unit and rest[0] == " " and rest.lstrip(" ") == unit):
        return None
    v = float(m.group(0))
    return v if math.isfinite(v) else None


def _ts(text: bytes) -> int | None:
    m = _TS.fullmatch(text.strip(b" \t").decode("latin-1"))
    if m is None:
        return None
    y, _, mo, d, h, mi, s, frac = m.groups()
    try:
        import datetime as dt

        dt.datetime(int(y), int(mo), int(d), int(h), int(mi), int(s))
    except ValueError:
        return None
    if not 1970 <= int(y) <= 2200:
        return None
    secs = calendar.timegm((int(y), int(mo), int(d), int(h), int(mi), int(s)))
    return secs * 10**9 + (int(frac.ljust(9, "0")) if frac else 0)


def reference(data: bytes) -> tuple[list[tuple[object, ...]], list[int]]:
    """(rows as (key, ts, clock, util, power_w, throttle), bad line numbers)."""
    rows: list[tuple[object, ...]] = []
    bad: list[int] = []
    cmap = None
    synthetic = False  # the first header had no timestamp: later ones need none
    lines = data.split(b"\n")
    truncated = lines[-1] != b""
    for no, raw in enumerate(lines[:-1] if not truncated else lines, start=1):
        if truncated and no == len(lines):
            if raw.strip(b" \t\r"):
                bad.append(no)
            break
        if raw.strip(b" \t") in (b"", b"\r"):
            continue
        line = raw[:-1] if raw.endswith(b"\r") else raw
        text = raw.decode("utf-8", "replace")
        if cmap is None:
            cmap = parse_header(text)
            assert cmap is not None
            synthetic = "time" not in cmap.roles
            continue
        row = _row(line.split(b","), cmap)
        if row is not None:
            rows.append(row)
            continue
        if 97 <= raw[0] <= 122:
            try:
                new = parse_header(text)
            except ValueError:
                new = None
            if new is not None and ("time" in new.roles or synthetic):
                cmap = new
                continue
        bad.append(no)
    return rows, bad


def _row(fields: list[bytes], cmap: object) -> tuple[object, ...] | None:
    names, roles = cmap.names, cmap.roles  # type: ignore[attr-defined]
    if len(fields) != len(names):
        return None
    key_role = next((r for r in ("uuid", "pci", "index") if r in roles), None)
    key = "one"
    if key_role is not None:
        key = fields[roles[key_role]].strip(b" \t").decode("latin-1")
        if not _KEYS[key_role].fullmatch(key) or len(key) > 96:
            return None
        key = {"uuid": key, "pci": f"pci:{key}", "index": f"index:{key}"}[key_role]
    ts = _ts(fields[roles["time"]]) if "time" in roles else -1
    if ts is None:
        return None
    values = []
    for role in ("sm_clock_mhz", "gpu_util_pct", "power_w"):
        v = _value(fields[roles[role]], COLUMNS[names[roles[role]]][1]) if role in roles \
            else math.nan
        if v is None:
            return None
        values.append(v)
    throttle = -1
    if "throttle" in roles:
        t = fields[roles["throttle"]].strip(b" \t").decode("latin-1")
        if t == "N/A" or (len(t) >= 2 and t[0] == "[" and t[-1] == "]"):
            throttle = -1
        elif re.fullmatch(r"0[xX][0-9a-fA-F]{1,16}", t):
            throttle = int(t, 16) - (1 << 64 if int(t, 16) >= 1 << 63 else 0)
        else:
            return None
    return (key, ts, values[0], values[1], values[2], throttle)


def compare(data: bytes, tmp: Path, block_bytes: int) -> None:
    path = write(tmp, data, "fuzz.csv")
    want_rows, want_bad = reference(data)
    cols, _, bad = read_all(path, block_bytes=block_bytes)
    assert [b.line for b in bad] == want_bad
    got = list(zip(cols["key"], cols["ts"].tolist(),
                   *(cols.get(n, np.full(len(cols["key"]), np.nan)).tolist()
                     for n in ("sm_clock_mhz", "gpu_util_pct", "power_mw")),
                   cols.get("throttle", np.full(len(cols["key"]), -1)).tolist(), strict=True))
    assert len(got) == len(want_rows)
    for g, w in zip(got, want_rows, strict=True):
        assert g[:2] == w[:2]
        np.testing.assert_array_equal(g[2:5], [w[2], w[3], float(w[4]) * 1000.0])  # type: ignore[arg-type]
        assert g[5] == w[5]


def test_kernel_matches_reference_on_the_fixtures(tmp_path: Path) -> None:
    for text in (WITH_UNITS, NOUNITS, WITH_UNITS.replace("\n", "\r\n")):
        for block in (256, 300, 1 << 20):
            compare(text.encode(), tmp_path, block)


_LINE = st.sampled_from(WITH_UNITS.splitlines()[1:] + NOUNITS.splitlines()[1:])
_MUTATION = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 400), st.integers(0, 255)),
    st.tuples(st.just("cut"), st.integers(0, 400), st.integers(1, 30)),
    st.tuples(st.just("insert"), st.integers(0, 400),
              st.binary(max_size=12) | st.sampled_from([b"\n", b",", b" MHz", b"[N/A]", b"e9",
                                                        b"1e400", b"\r", b"timestamp, index\n"])),
)


def _mutate(data: bytes, mutations: list[tuple[str, int, Any]]) -> bytes:
    b = bytearray(data)
    header_end = b.index(b"\n") + 1
    for kind, pos, arg in mutations:
        at = header_end + pos % max(1, len(b) - header_end)
        if kind == "flip":
            b[at:at + 1] = bytes([arg])
        elif kind == "cut":
            del b[at:at + int(arg)]
        else:
            b[at:at] = arg
    return bytes(b)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_LINE, min_size=1, max_size=12), st.lists(_MUTATION, max_size=4),
       st.sampled_from([1024, 4096, 1 << 16]))
def test_fuzz_corrupted_logs_parse_like_the_reference(lines: list[str],
                                                      mutations: list[tuple[str, int, object]],
                                                      block: int) -> None:
    data = _mutate((HEADER + "\n" + "\n".join(lines) + "\n").encode(), mutations)
    with tempfile.TemporaryDirectory() as tmp:
        compare(data, Path(tmp), block)


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=600))
def test_fuzz_arbitrary_bytes_never_crash(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = write(Path(tmp), data)
        try:
            chunks = list(NvidiaSmiReader(path, block_bytes=64).chunks())
        except ReplayError as e:
            error: ReplayError | None = e
            chunks = []
        else:
            error = None
        if error is not None:
            assert str(path) in str(error)
        for c in chunks:
            assert c.gpu.shape == c.timestamp_ns.shape
            assert all(0 <= g < len(c.gpus) for g in c.gpu.tolist())


def replay_totals(path: Path, tmp: Path, name: str) -> dict[str, tuple[int, ...]]:
    engine = ReplayEngine(tmp / f"{name}.sqlite", ReplayOptions(interval_hint_s=1.0))
    summary = engine.run([path])
    return {k: (*g.totals.flop, g.totals.energy_mj, g.totals.samples)
            for k, g in summary.gpus.items()}


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(4, 16), st.lists(_MUTATION, min_size=1, max_size=4))
def test_fuzz_totals_equal_those_of_the_clean_rows(
        ticks: int, mutations: list[tuple[str, int, object]]) -> None:
    rng = np.random.default_rng(ticks)
    lines = [HEADER]
    for t in range(ticks):
        for g, (u, name) in enumerate(((U0, "NVIDIA H100 80GB HBM3"),
                                       (U1, "NVIDIA A100-SXM4-80GB"))):
            lines.append(f"2026/11/28 12:{t // 60:02d}:{t % 60:02d}.{g * 7:03d}, {g}, {u}, {name}, "
                         f"00000000:18:00.0, {rng.integers(0, 101)} %, "
                         f"{rng.integers(1200, 1981)} MHz, 1980 MHz, "
                         f"{rng.uniform(100, 700):.2f} W, 0x0000000000000000")
    data = _mutate(("\n".join(lines) + "\n").encode(), mutations)
    _, bad = reference(data)
    # The clean file: every line the reference took (rows and headers), nothing else.
    clean = b"".join(ln + b"\n" for no, ln in enumerate(data.split(b"\n"), start=1)
                     if no not in bad and ln.strip(b" \t") not in (b"", b"\r"))
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        assert replay_totals(write(d, data, "dirty.csv"), d, "dirty") == replay_totals(
            write(d, clean, "clean.csv"), d, "clean")
