"""The dcgm-exporter scrape reader.

Fixtures follow dcgm-exporter's ``/metrics`` output (Prometheus text format 0.0.4) as
its README and real scrapes show it: ``# HELP``/``# TYPE`` per family, then
``DCGM_FI_PROF_PIPE_TENSOR_ACTIVE{gpu="0",UUID="GPU-...",pci_bus_id="00000000:37:00.0",
device="nvidia0",modelName="Tesla T4",Hostname="cp-bm14r7",DCGM_FI_DRIVER_VERSION=
"590.48.01"} 0.005822``, with ``container``/``namespace``/``pod`` on Kubernetes,
``GPU_I_PROFILE``/``GPU_I_ID`` on MIG instances and ``hpc_job`` from its HPC job
mapping; blank values as DCGM's sentinels (``9223372036854775794``).
"""

from __future__ import annotations

import calendar
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.replay.engine import ReplayEngine, ReplayOptions
from agent.replay.readers.base import ColumnChunk, ReplayError
from agent.replay.readers.dcgm import DcgmReader, parse_scrape_time
from agent.sources.base import ActivityKind

H100 = "GPU-8f2c1d90-5e0b-4c1a-9b7e-3d2f1a0c9e44"
A100 = "GPU-d6dd33b9-e50e-997c-f303-c8f7312fa498"
T0 = 1_795_000_000
FAMILIES = (
    ("DCGM_FI_DEV_SM_CLOCK", "gauge", "SM clock frequency (in MHz)."),
    ("DCGM_FI_DEV_GPU_UTIL", "gauge", "GPU utilization (in %)."),
    ("DCGM_FI_DEV_POWER_USAGE", "gauge", "Power draw (in W)."),
    ("DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", "counter",
     "Total energy consumption since boot (in mJ)."),
    ("DCGM_FI_PROF_PIPE_TENSOR_ACTIVE", "gauge",
     "Ratio of cycles the tensor (HMMA) pipe is active."),
    ("DCGM_FI_DEV_MEMORY_TEMP", "gauge", "Memory temperature (in C)."),
)


def labels(gpu: int, uuid: str, model: str, extra: str = "") -> str:
    return (f'gpu="{gpu}",UUID="{uuid}",pci_bus_id="00000000:{0x18 + gpu:02X}:00.0",'
            f'device="nvidia{gpu}",modelName="{model}",Hostname="node-7",'
            f'DCGM_FI_DRIVER_VERSION="550.90.07"{extra}')


def scrape(k: int, pods: bool = True) -> str:
    """Scrape ``k``: GPU 0 an H100 with profiling metrics, GPU 1 an A100 without."""
    h = labels(0, H100, "NVIDIA H100 80GB HBM3",
               ',container="trainer",namespace="ml",pod="train-0"' if pods else "")
    a = labels(1, A100, "NVIDIA A100-SXM4-80GB", ',hpc_job="81234"' if pods else "")
    values = {
        "DCGM_FI_DEV_SM_CLOCK": (1980 - k % 3 * 15, 1410),
        "DCGM_FI_DEV_GPU_UTIL": (97, 80 + k % 5),
        "DCGM_FI_DEV_POWER_USAGE": (f"{612.34 + k:.6f}", f"{301.5 + k:.6f}"),
        "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION": (31035686671 + k * 9_000_000,
                                                 7035686671 + k * 4_500_000),
        "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE": (f"{0.929260 - k * 0.001:.6f}", None),
        "DCGM_FI_DEV_MEMORY_TEMP": (9223372036854775794, 41),
    }
    out = [f"# scrape {T0 + 15 * k}.000000000"]
    for name, kind, help_text in FAMILIES:
        out += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
        for lab, v in zip((h, a), values[name], strict=True):
            if v is not None:
                out.append(f"{name}{{{lab}}} {v}")
    return "\n".join(out) + "\n"


def recording(n: int = 20, **kw: bool) -> str:
    return "".join(scrape(k, **kw) for k in range(n))


def read(path: Path, **kw: object) -> list[ColumnChunk]:
    return list(DcgmReader(path, **kw).chunks())  # type: ignore[arg-type]


def column(chunks: list[ColumnChunk], name: str) -> npt.NDArray[Any]:
    return np.concatenate([c.fields.get(name, np.full(c.rows, np.nan)) for c in chunks])


def test_scrapes_become_samples(tmp_path: Path) -> None:
    path = tmp_path / "dcgm.prom"
    path.write_text(recording(3))
    chunks = read(path)
    gpus = chunks[-1].gpus
    assert [(g.key, g.name, g.index, g.host) for g in gpus] == [
        (H100, "NVIDIA H100 80GB HBM3", 0, "node-7"), (A100, "NVIDIA A100-SXM4-80GB", 1, "node-7")]
    assert [g.activity_kind for g in gpus] == [ActivityKind.DCGM, ActivityKind.NONE]
    assert all(not c.bad for c in chunks)
    gpu = np.concatenate([c.gpu for c in chunks])
    ts = np.concatenate([c.timestamp_ns for c in chunks])
    assert gpu.tolist() == [0, 1] * 3
    assert ts.tolist() == [(T0 + 15 * k) * 10**9 for k in range(3) for _ in range(2)]
    np.testing.assert_array_equal(column(chunks, "tensor_any_pct")[::2],
                                  [0.929260 * 100, 0.928260 * 100, 0.927260 * 100])
    assert np.isnan(column(chunks, "tensor_any_pct")[1::2]).all()
    assert column(chunks, "power_mw")[:2].tolist() == [612.34 * 1000, 301.5 * 1000]
    assert column(chunks, "energy_mj")[:2].tolist() == [31035686671.0, 7035686671.0]
    assert column(chunks, "sm_clock_mhz").tolist() == [1980, 1410, 1965, 1410, 1950, 1410]
    runs = [chunks[-1].attribution_table[i].shares[0].run.run_id
            for c in chunks for i in c.attribution.tolist()]  # type: ignore[union-attr]
    assert runs[:2] == ["k8s-ml/train-0", "slurm-81234"]


def test_labels_naming_runs_mig_and_blanks(tmp_path: Path) -> None:
    mig = ('DCGM_FI_PROF_PIPE_TENSOR_ACTIVE{gpu="0",UUID="%s",device="nvidia0",'
           'modelName="NVIDIA A100-SXM4-80GB",GPU_I_PROFILE="1g.10gb",GPU_I_ID="%d",'
           'Hostname="n",pod_uid="1B4E2F3A-0c1d-4e5f-8a9b-0c1d2e3f4a5b",pod="p"} 0.5\n')
    text = "# scrape 2026-11-28T12:00:00Z\n" + mig % (A100, 7) + mig % (A100, 9) + (
        'DCGM_FI_DEV_SM_CLOCK{gpu="3",Hostname="n",run="r1"} 2147483632\n')
    path = tmp_path / "m.prom"
    path.write_text(text)
    chunks = read(path)
    keys = [g.key for g in chunks[-1].gpus]
    assert keys == [f"{A100}/mig:7", f"{A100}/mig:9", "n/index:3"]
    assert chunks[-1].gpus[0].mig_profile == "1g.10gb"
    table = chunks[-1].attribution_table
    assert [a.shares[0].run.run_id for a in table] == [
        "k8s-pod-1b4e2f3a-0c1d-4e5f-8a9b-0c1d2e3f4a5b", "r1"]
    assert np.isnan(column(chunks, "sm_clock_mhz")[2])  # DCGM_INT32_BLANK: unknown


def test_bad_lines_are_reported_with_their_numbers(tmp_path: Path) -> None:
    lines = scrape(0).splitlines()
    sample = lines[3]
    bad = [
        sample.replace('gpu="0"', 'gpu="0'),  # 2+: malformed labels
        sample.rsplit(" ", 1)[0] + " +Inf",
        sample.rsplit(" ", 1)[0] + " twelve",
        "DCGM_FI_DEV_SM_CLOCK{} 1980",  # no GPU label
        "{} ???",
        sample.rsplit(" ", 1)[0] + " 1 99999999999999999",  # a timestamp beyond 2255
    ]
    text = "\n".join([lines[0], *bad, *lines[1:]]) + "\n" + sample[:50]
    path = tmp_path / "b.prom"
    path.write_text(text)
    chunks = read(path)
    got = [(b.line, b.reason) for c in chunks for b in c.bad]
    assert [n for n, _ in got] == [2, 3, 4, 5, 6, 7, len(lines) + 7]
    assert got[1][1] == "non-finite value '+Inf'"
    assert got[-1][1].startswith("truncated last line")
    assert sum(c.rows for c in chunks) == 2


def test_timestamps_on_samples_or_from_the_hint(tmp_path: Path) -> None:
    stamped = "".join(
        f'DCGM_FI_DEV_GPU_UTIL{{gpu="0",UUID="{H100}"}} {50 + k} {(T0 + k) * 1000}\n'
        for k in range(3))
    path = tmp_path / "s.prom"
    path.write_text(stamped)
    chunks = read(path)
    assert np.concatenate([c.timestamp_ns for c in chunks]).tolist() == [
        (T0 + k) * 10**9 for k in range(3)]
    bare = recording(3).replace("# scrape", "# comment")
    path.write_text(bare)
    with pytest.raises(ReplayError, match="--interval-hint"):
        read(path)
    chunks = read(path, interval_hint_s=15.0)
    assert np.concatenate([c.timestamp_ns for c in chunks]).tolist() == [
        k * 15 * 10**9 for k in range(3) for _ in range(2)]


def test_scrape_times() -> None:
    assert parse_scrape_time("1795000000.5") == 1_795_000_000_500_000_000
    noon = calendar.timegm((2026, 11, 28, 12, 0, 0)) * 10**9
    assert parse_scrape_time("2026-11-28T12:00:00Z") == noon
    assert parse_scrape_time("2026-11-28T13:00:00+01:00") == noon
    assert parse_scrape_time("2026-11-28T12:00:00") == noon  # no zone: UTC
    assert parse_scrape_time("yesterday") is None
    assert parse_scrape_time("nan") is None


def test_replay_uses_dcgm_tensor_activity_and_the_energy_counter(tmp_path: Path) -> None:
    path = tmp_path / "dcgm.prom"
    path.write_text(recording(40))
    summary = ReplayEngine(tmp_path / "l.sqlite", ReplayOptions(record_s=120)).run([path])
    assert summary.bad_count == 0
    assert summary.gpus[H100].estimator == "dcgm_tensor"
    assert summary.gpus[H100].spec == "h100_sxm"
    assert summary.gpus[A100].estimator == "utilization"
    assert summary.gpus[A100].spec == "a100_80gb"
    assert summary.gpus[H100].totals.energy_mj == 39 * 9_000_000
    assert summary.max_gap_s == 37.5  # 2.5 x the 15 s scrape interval
    assert set(summary.runs) == {"k8s-ml/train-0", "slurm-81234"}
    h = summary.gpus[H100].totals.flop
    assert 0 < h.low < h.central < h.high


_MUTATION = st.tuples(st.integers(0, 10**6), st.sampled_from(["flip", "cut", "insert"]),
                      st.binary(min_size=1, max_size=6))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_MUTATION, min_size=1, max_size=5))
def test_fuzz_bad_lines_change_nothing_but_themselves(mutations: list[tuple[int, str, bytes]]
                                                      ) -> None:
    data = bytearray(recording(12).encode())
    for at, kind, junk in mutations:
        at %= len(data)
        if kind == "flip":
            data[at] = junk[0]
        elif kind == "cut":
            del data[at:at + len(junk)]
        else:
            data[at:at] = junk
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        dirty = d / "dirty.prom"
        dirty.write_bytes(bytes(data))
        options = ReplayOptions(interval_hint_s=15.0, max_bad_share=1.0)
        first = ReplayEngine(d / "a.sqlite", options).run([dirty])
        if first.errors:
            assert str(dirty) in first.errors[0]
            return
        # The lines the reader found bad; a sample that cannot be true (a scrape the
        # cut marker left at time 0) is judged by the engine, and stays in.
        bad = {b.line for c in read(dirty, interval_hint_s=15.0) for b in c.bad}
        lines = bytes(data).split(b"\n")
        clean = d / "clean.prom"
        clean.write_bytes(b"".join(ln + b"\n" for n, ln in enumerate(lines, start=1)
                                   if n not in bad and n < len(lines)))
        assert not [b for c in read(clean, interval_hint_s=15.0) for b in c.bad]
        second = ReplayEngine(d / "b.sqlite", options).run([clean])
        assert second.bad_count == first.bad_count - len(bad)
        assert set(second.bad_reasons) <= set(first.bad_reasons)
        assert {k: (g.totals.flop, g.totals.energy_mj) for k, g in first.gpus.items()} == {
            k: (g.totals.flop, g.totals.energy_mj) for k, g in second.gpus.items()}


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=500))
def test_fuzz_arbitrary_bytes(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x.prom"
        path.write_bytes(b"# scrape 1795000000\n" + data)
        for c in DcgmReader(path).chunks():
            assert c.gpu.shape == c.timestamp_ns.shape
