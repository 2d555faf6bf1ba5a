"""``flopledger replay`` on recordings that cannot be true (issue 10, part D).

For every format (nvidia-smi CSV, dcgm-exporter scrapes, Prometheus ``query_range``
JSON, flopledger traces) and every impossible value: an SM clock above the GPU's
maximum or negative, utilization or tensor activity outside 0-100 %, negative or
impossibly high power, a negative or impossibly fast energy counter, a time in 2100,
before 2000, far from its neighbours or going backwards. One such sample in 300 is a
bad row named with its line (the replay succeeds and the ledger's totals are the sum
of its records); more than ``--max-bad-share`` of them, or nothing valid at all, fail
the replay, which then creates and changes nothing. The recordings come from
:mod:`tests.replay.recordings` (two GPUs, one sample a second from 2025-06-01).
"""

from __future__ import annotations

from pathlib import Path

from tests.hostile.harness import Case
from tests.replay import recordings as rec

LEDGER = "out/ledger.sqlite"
TICKS, TICK, GPU = 150, 70, 0
AFTER, BEFORE = 4102444800.0, 946684799.0  # 2100-01-01, 1999-12-31 23:59:59
FAR, BACK = "+21600", "-30"  # seconds from the sample's own time
IMPOSSIBLE: list[tuple[str, str, float | str, str]] = [
    ("clock-99999999", "clock", 99999999, "SM clock above the GPU's maximum: 99999999 MHz, "
                                          "at most 2079 MHz (1980 MHz + 5%)"),
    ("clock-negative", "clock", -5, "negative SM clock: -5 MHz"),
    ("util-250", "util", 250, "utilization outside 0-100%: 250%"),
    ("util-negative", "util", -1, "utilization outside 0-100%: -1%"),
    ("tensor-150", "tensor", 150, "tensor activity outside 0-100%: 150%"),
    ("power-negative", "power", -3, "negative power: -3 W"),
    ("power-99999W", "power", 99999, "power far above any GPU's maximum: 99999 W"),
    ("energy-negative", "energy", -5, "negative energy counter: -5 mJ"),
    ("energy-jump", "energy", 1e15, "energy counter jump beyond any GPU's power"),
    ("time-2100", "time", AFTER, "timestamp in the future: 2100-01-01 00:00:00Z"),
    ("time-1999", "time", BEFORE, "timestamp before 2000: 1999-12-31 23:59:59Z"),
    ("time-far-ahead", "time", FAR, "timestamp far from its GPU's neighbours"),
    ("time-backwards", "time", BACK, "timestamp not after its GPU's previous sample"),
]
RECORDED = {"nvidia-smi": {"clock", "util", "power", "time"}}  # no tensor, no energy


def _argv(name: str, *extra: str) -> tuple[str, ...]:
    return ("replay", f"{{dir}}/{name}", "--ledger", f"{{dir}}/{LEDGER}", "--quiet", *extra)


def _one(fmt: str, label: str, field: str, raw: float | str, reason: str) -> Case:
    make, name = rec.FORMATS[fmt]
    value = rec.T0 + TICK + float(raw) if isinstance(raw, str) else float(raw)
    if fmt == "trace" and field == "time" and not isinstance(raw, str):
        field = "wall"  # a trace's calendar time is the tick's wall time
    content, lines = make(TICKS, {(TICK, GPU, field): value})
    line = lines[(TICK, GPU, field)]
    if fmt == "prom-range" and raw == BACK:
        # A range export keeps a series' points in time order: a point moved back is
        # a second value at a time the series has, in each of its five series, and
        # five bad rows of 304 are too many.
        return Case(f"{fmt}-{label}", _argv(name), 1,
                    f"{name}:1: series 0 (DCGM_FI_DEV_SM_CLOCK) point 70: a second value",
                    files={name: content})
    if fmt == "prom-range" and raw == FAR:
        # Sorted into place, the point comes last: nothing after it confirms it.
        reason = "timestamp far after its GPU's previous sample"
    return Case(f"{fmt}-{label}", _argv(name), 0, f"{name}:{line}: {reason}",
                files={name: content}, may_change=("out",), ledger=LEDGER)


CASES: list[Case] = [
    _one(fmt, label, field, raw, reason)
    for fmt in rec.FORMATS for label, field, raw, reason in IMPOSSIBLE
    if field in RECORDED.get(fmt, {field})
]


def _smi(ticks: int, edits: rec.Edits) -> str:
    return rec.smi(ticks, edits)[0]


def _ledger_of_a_good_replay(directory: Path) -> None:
    from agent.replay.engine import ReplayEngine, ReplayOptions

    path, _ = rec.write(directory, "nvidia-smi", 60, name="earlier.csv")
    ReplayEngine(directory / LEDGER, ReplayOptions()).run([path])


def _ledger_without_its_key(directory: Path) -> None:
    _ledger_of_a_good_replay(directory)
    for name in ("ledger.sqlite.key", "ledger.sqlite.pub"):
        (directory / "out" / name).unlink()


_ALL_BAD = {(t, g, "clock"): -1.0 for t in range(20) for g in range(2)}
_FIVE_PERCENT = {(t, 1, "util"): 101.0 for t in range(0, TICKS, 10)}  # 15 of 300
_HEADER = rec.smi(1)[0].splitlines(keepends=True)[0]
_UNKNOWN_GPU = _HEADER + "".join(
    f"2025/06/01 12:{t // 60:02d}:{t % 60:02d}.000, 0, GPU-00000000-0000-0000-0000-"
    f"00000000000a, Mystery Accelerator, {6000 if t == 30 else 2500} MHz, [N/A], 50 %, "
    "100.00 W\n" for t in range(120))
_OWN_MAX = _HEADER + "".join(
    f"2025/06/01 12:{t // 60:02d}:{t % 60:02d}.000, 0, {rec.UUIDS[0]}, {rec.NAMES[0]}, "
    f"{1700 if t == 100 else 1400} MHz, 1500 MHz, 50 %, 100.00 W\n" for t in range(120))

_BOTH = {(20, 0, "time"): AFTER, (40, 1, "clock"): 99999999.0}
_BOTH_LINE = rec.smi(TICKS, _BOTH)[1][(20, 0, "time")]

CASES += [
    Case("nothing-valid", _argv("gpu.csv"), 1, "no valid sample in",
         files={"gpu.csv": _smi(20, _ALL_BAD)}),
    Case("nothing-valid-names-the-first-bad-line", _argv("gpu.csv"), 1,
         "gpu.csv:2: negative SM clock: -1 MHz); nothing written to",
         files={"gpu.csv": _smi(20, _ALL_BAD)}),
    Case("header-only", _argv("gpu.csv"), 1, "nothing to account, 0 bad rows",
         files={"gpu.csv": _HEADER}),
    Case("empty-file", _argv("gpu.csv"), 1, "cannot tell the format",
         files={"gpu.csv": ""}),
    Case("too-many-bad-rows", _argv("gpu.csv"), 1,
         "15 of 300 rows bad (5.00%), more than --max-bad-share 1.00% (first: ",
         files={"gpu.csv": _smi(TICKS, _FIVE_PERCENT)}),
    Case("too-many-bad-rows-names-the-line", _argv("gpu.csv"), 1,
         "gpu.csv:3: utilization outside 0-100%: 101%",
         files={"gpu.csv": _smi(TICKS, _FIVE_PERCENT)}),
    Case("max-bad-share-raised", _argv("gpu.csv", "--max-bad-share", "6%"), 0,
         "bad rows       15", files={"gpu.csv": _smi(TICKS, _FIVE_PERCENT)},
         may_change=("out",), ledger=LEDGER),
    Case("max-bad-share-above-one", _argv("gpu.csv", "--max-bad-share", "2"), 2,
         "expected a share from 0 to 1", files={"gpu.csv": _smi(TICKS, {})}),
    Case("max-bad-share-not-a-number", _argv("gpu.csv", "--max-bad-share", "lots"), 2,
         "expected a share from 0 to 1", files={"gpu.csv": _smi(TICKS, {})}),
    Case("failed-replay-leaves-the-ledger-as-it-was", _argv("gpu.csv"), 1,
         "more than --max-bad-share", files={"gpu.csv": _smi(TICKS, _FIVE_PERCENT)},
         setup=_ledger_of_a_good_replay, ledger=LEDGER),
    Case("ledger-without-its-key", _argv("gpu.csv"), 1,
         "ledger.sqlite.key: missing: the key of the existing ledger",
         files={"gpu.csv": _smi(TICKS, {})}, setup=_ledger_without_its_key, ledger=LEDGER),
    Case("unknown-gpu-above-any-clock", _argv("gpu.csv"), 0,
         "gpu.csv:32: SM clock above the GPU's maximum: 6000 MHz, no GPU reaches 5000 MHz",
         files={"gpu.csv": _UNKNOWN_GPU}, may_change=("out",), ledger=LEDGER),
    Case("the-files-own-max-clock", _argv("gpu.csv"), 0,
         "gpu.csv:102: SM clock above the GPU's maximum: 1700 MHz, at most 1575 MHz "
         "(1500 MHz + 5%)", files={"gpu.csv": _OWN_MAX}, may_change=("out",), ledger=LEDGER),
    Case("2100-and-fast-clock-in-one-log", _argv("gpu.csv", "--max-bad-share", "0.02"), 0,
         f"gpu.csv:{_BOTH_LINE}: timestamp in the future: 2100-01-01",
         files={"gpu.csv": _smi(TICKS, _BOTH)},
         may_change=("out",), ledger=LEDGER),
    Case("hint-timed-scrapes-are-not-1970", ("replay", "{dir}/dcgm.prom", "--ledger",
                                             f"{{dir}}/{LEDGER}", "--quiet",
                                             "--interval-hint", "1"), 0,
         "bad rows       0",
         files={"dcgm.prom": "".join(line for line in rec.dcgm(TICKS)[0].splitlines(True)
                                     if not line.startswith("#"))},
         may_change=("out",), ledger=LEDGER),
    Case("ledger-under-a-file", ("replay", "{dir}/gpu.csv", "--ledger",
                                 "{dir}/gpu.csv/ledger.sqlite", "--quiet"), 1,
         "cannot write", files={"gpu.csv": _smi(TICKS, {})}),
]


# -- dcgmi dmon logs: no time, no GPU name, columns by position ------------------------

_DMON_TAGS = (("#Entity", 16), ("SMACT", 13), ("TENSO", 13), ("SMCLK", 13), ("POWER", 18),
              ("GPUTL", 18))


def _dmon_line(values: tuple[str, ...]) -> str:
    return "".join(v.ljust(w) for v, (_, w) in zip(values, _DMON_TAGS, strict=True)) + "\n"


def _dmon(rounds: int, edits: dict[tuple[int, str], str] | None = None,
          units: str = " W") -> tuple[str, dict[int, int]]:
    """A dmon log of GPU 0 as DCGM 3+ prints it (header and units line every 14 rounds)
    with a field of some rounds replaced; and the line of each round."""
    head = _dmon_line(tuple(t for t, _ in _DMON_TAGS)) + _dmon_line(
        ("ID", "", "", "", units, ""))
    out, lines, n = [], {}, 0
    for k in range(rounds):
        if k % 14 == 0:
            out.append(head)
            n += 2
        values = {"SMACT": "0.945", "TENSO": f"0.{590 + k % 7}", "SMCLK": f"{1200 + k % 5 * 15}",
                  "POWER": "346.125", "GPUTL": "100"}
        values.update({f: v for (r, f), v in (edits or {}).items() if r == k})
        out.append(_dmon_line(("GPU 0", *(values[t] for t, _ in _DMON_TAGS[1:]))))
        n += 1
        lines[k] = n
    return "".join(out), lines


def _dmon_argv(*extra: str) -> tuple[str, ...]:
    return _argv("dmon.log", "--gpu-model", "h100_pcie", *extra)


_DMON_BAD = {(70, "TENSO"): "1.500", (90, "SMCLK"): "-5", (110, "POWER"): "99999.000"}
_DMON_TYPO = {(40, "TENSO"): "0.5x9"}
CASES += [
    Case("dmon-without-interval-hint", _dmon_argv(), 1,
         "dmon.log: line 3: dcgmi dmon prints no time: pass --interval-hint",
         files={"dmon.log": _dmon(TICKS)[0]}),
    Case("dmon-impossible-values-named-by-line",
         _dmon_argv("--interval-hint", "0.1", "--max-bad-share", "0.05"), 0,
         f"dmon.log:{_dmon(TICKS, _DMON_BAD)[1][70]}: tensor activity outside 0-100%: 150%",
         files={"dmon.log": _dmon(TICKS, _DMON_BAD)[0]}, may_change=("out",), ledger=LEDGER),
    Case("dmon-negative-clock-named-by-line",
         _dmon_argv("--interval-hint", "0.1", "--max-bad-share", "0.05"), 0,
         f"dmon.log:{_dmon(TICKS, _DMON_BAD)[1][90]}: negative SM clock: -5 MHz",
         files={"dmon.log": _dmon(TICKS, _DMON_BAD)[0]}, may_change=("out",), ledger=LEDGER),
    Case("dmon-unparsable-value-named-by-line", _dmon_argv("--interval-hint", "0.1"), 0,
         f"dmon.log:{_dmon(TICKS, _DMON_TYPO)[1][40]}: bad number '0.5x9' in column TENSO",
         files={"dmon.log": _dmon(TICKS, _DMON_TYPO)[0]}, may_change=("out",), ledger=LEDGER),
    Case("dmon-header-cut-off", _dmon_argv("--interval-hint", "0.1"), 1,
         "no dcgmi dmon header line",
         files={"dmon.log": "".join(line for line in _dmon(TICKS)[0].splitlines(True)
                                    if line.startswith("GPU"))}),
    Case("dmon-header-without-a-used-field", _dmon_argv("--interval-hint", "0.1"), 1,
         "line 1: the dmon header names no field the replay reads",
         files={"dmon.log": "#Entity         DRAMA        PCITX\nGPU 0           0.120"
                            "        1024\n"}),
    Case("dmon-power-in-milliwatts", _dmon_argv("--interval-hint", "0.1"), 1,
         "line 2: column POWER in 'mW', expected 'W'",
         files={"dmon.log": _dmon(TICKS, units=" mW")[0]}),
]
