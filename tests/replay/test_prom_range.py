"""The Prometheus ``/api/v1/query_range`` export reader.

Fixtures are responses in the shape the HTTP API documents
(https://prometheus.io/docs/prometheus/latest/querying/api/#range-queries):
``{"status":"success","data":{"resultType":"matrix","result":[{"metric":{"__name__":
...},"values":[[1795000000,"1980"],...]}]}}``, one compact response per line as
``curl`` saves them, or pretty-printed as ``jq .`` does; series labelled as
dcgm-exporter and flopledger's own exporter label them, plus Prometheus's ``instance``
and ``job``.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.replay.engine import ReplayEngine, ReplayOptions, detect_format
from agent.replay.readers.base import ColumnChunk
from agent.replay.readers.prom_range import PromRangeReader
from agent.replay.readers.promseries import gpu_key
from agent.sources.base import ActivityKind

U0 = "GPU-8f2c1d90-5e0b-4c1a-9b7e-3d2f1a0c9e44"
U1 = "GPU-d6dd33b9-e50e-997c-f303-c8f7312fa498"
T0 = 1_795_000_000
DCGM = {"instance": "node-7:9400", "job": "dcgm-exporter", "Hostname": "node-7"}


def series(name: str, uuid: str, gpu: int, points: Sequence[tuple[float, object]],
           **extra: str) -> dict[str, Any]:
    labels = {"__name__": name, "UUID": uuid, "gpu": str(gpu), **DCGM, **extra}
    return {"metric": labels, "values": [[t, v] for t, v in points]}


def response(*result: dict[str, Any], kind: str = "matrix") -> dict[str, Any]:
    return {"status": "success", "data": {"resultType": kind, "result": list(result)}}


def window(start: int, steps: int, step: int = 15) -> dict[str, list[dict[str, Any]]]:
    """A window of the four DCGM series of an H100 (with tensor activity) and an A100."""
    ts = [start + k * step for k in range(steps)]
    h = {"modelName": "NVIDIA H100 80GB HBM3", "pod": "train-0", "namespace": "ml"}
    a = {"modelName": "NVIDIA A100-SXM4-80GB"}
    return {
        "DCGM_FI_DEV_SM_CLOCK": [series("DCGM_FI_DEV_SM_CLOCK", U0, 0, [(t, "1980") for t in ts],
                                        **h),
                                 series("DCGM_FI_DEV_SM_CLOCK", U1, 1, [(t, "1410") for t in ts],
                                        **a)],
        "DCGM_FI_DEV_GPU_UTIL": [series("DCGM_FI_DEV_GPU_UTIL", U0, 0, [(t, "97") for t in ts],
                                        **h),
                                 series("DCGM_FI_DEV_GPU_UTIL", U1, 1, [(t, "85") for t in ts],
                                        **a)],
        "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE": [
            series("DCGM_FI_PROF_PIPE_TENSOR_ACTIVE", U0, 0,
                   [(t, f"{0.9 - k * 0.001:.6f}") for k, t in enumerate(ts)], **h)],
        "DCGM_FI_DEV_POWER_USAGE": [
            series("DCGM_FI_DEV_POWER_USAGE", U0, 0, [(t, "612.5") for t in ts], **h),
            series("DCGM_FI_DEV_POWER_USAGE", U1, 1, [(t, "301.25") for t in ts[1:]], **a)],
    }


def lines_per_query(*windows: dict[str, list[dict[str, Any]]]) -> str:
    """One compact response per query and window, one per line (``curl >> file``)."""
    return "".join(json.dumps(response(*s), separators=(",", ":")) + "\n"
                   for w in windows for s in w.values())


def read(path: Path) -> list[ColumnChunk]:
    return list(PromRangeReader(path, block_bytes=4096).chunks())


def col(chunks: list[ColumnChunk], name: str) -> npt.NDArray[Any]:
    return np.concatenate([c.fields.get(name, np.full(c.rows, np.nan)) for c in chunks])


def test_queries_are_joined_by_gpu_and_time(tmp_path: Path) -> None:
    path = tmp_path / "export.json"
    path.write_text(lines_per_query(window(T0, 4)))
    assert detect_format(path) == "prom-range"
    chunks = read(path)
    assert sum(c.rows for c in chunks) == 8
    assert all(not c.bad for c in chunks)
    gpus = chunks[-1].gpus
    assert [g.key for g in gpus] == [U0, U1]
    assert [g.activity_kind for g in gpus] == [ActivityKind.DCGM, ActivityKind.NONE]
    gpu = np.concatenate([c.gpu for c in chunks])
    ts = np.concatenate([c.timestamp_ns for c in chunks])
    assert gpu.tolist() == [0] * 4 + [1] * 4
    assert ts.tolist() == [(T0 + 15 * k) * 10**9 for k in range(4)] * 2
    np.testing.assert_array_equal(col(chunks, "power_mw")[4:], [np.nan, 301250.0, 301250.0,
                                                                301250.0])
    assert col(chunks, "tensor_any_pct")[0] == 0.9 * 100
    table = chunks[-1].attribution_table
    assert [a.shares[0].run.run_id for a in table] == ["k8s-ml/train-0"]


def test_windows_are_emitted_one_after_another(tmp_path: Path) -> None:
    path = tmp_path / "export.json"
    path.write_text(lines_per_query(window(T0, 4), window(T0 + 60, 4)))
    chunks = [c for c in read(path) if c.rows]
    assert len(chunks) == 2
    assert chunks[0].timestamp_ns.max() < chunks[1].timestamp_ns.min()


def test_pretty_printed_responses_and_flopledger_series(tmp_path: Path) -> None:
    labels = {"gpu": "0", "uuid": U0, "instance": "node-7:9947", "job": "flopledger"}
    info = {"metric": {"__name__": "flopledger_gpu_info", **labels, "estimator": "gpm_tensor",
                       "name": "NVIDIA H100 80GB HBM3", "source": "nvml", "spec": "h100_sxm"},
            "values": [[T0, "1"]]}
    clock = {"metric": {"__name__": "flopledger_gpu_sm_clock_hertz", **labels},
             "values": [[T0 + k, "1.98e+09"] for k in range(3)]}
    util = {"metric": {"__name__": "flopledger_gpu_utilization_ratio", **labels, "run": "r7"},
            "values": [[T0 + k, "0.5"] for k in range(3)]}
    path = tmp_path / "pretty.json"
    path.write_text(json.dumps(response(info, clock, util), indent=2) + "\n")
    chunks = read(path)
    key = chunks[-1].gpus[0]
    assert (key.spec_key, key.activity_kind, key.name) == (
        "h100_sxm", ActivityKind.GPM, "NVIDIA H100 80GB HBM3")
    assert col(chunks, "sm_clock_mhz").tolist() == [1980.0] * 3
    assert col(chunks, "gpu_util_pct").tolist() == [50.0] * 3
    assert chunks[-1].attribution_table[0].shares[0].run.run_id == "r7"


@pytest.mark.parametrize(("spec_labels", "spec_key"), [
    ({"spec": "table", "spec_key": "h100_sxm"}, "h100_sxm"),
    # The agent found no row: the replay resolves the name again, never takes the
    # stand-in spec as a table row.
    ({"spec": "ceiling", "spec_key": "ceiling/a100_40gb"}, None),
    ({"spec": "derived", "spec_key": "derived/cc9.0"}, None),
    ({"spec": "h100_sxm"}, "h100_sxm"),  # agents that exported the row as spec
])
def test_the_spec_row_named_by_flopledger_gpu_info(spec_labels: dict[str, str],
                                                   spec_key: str | None) -> None:
    labels = {"__name__": "flopledger_gpu_info", "gpu": "0", "uuid": U0,
              "name": "NVIDIA H100 80GB HBM3", **spec_labels}
    key = gpu_key(labels)
    assert key is not None
    assert key.spec_key == spec_key


def test_bad_entries_are_reported(tmp_path: Path) -> None:
    good = json.dumps(response(series("DCGM_FI_DEV_GPU_UTIL", U0, 0,
                                      [(T0, "90"), (T0 + 15, "+Inf"), (T0 + 30, 7)])))
    docs = [
        good,  # 1: two bad points
        '{"status":"error","errorType":"bad_data","error":"parse error"}',  # 2
        json.dumps(response({"metric": {}, "value": [T0, "1"]}, kind="vector")),  # 3
        json.dumps({"status": "success", "data": {"resultType": "scalar", "result": [T0, "1"]}}),
        "{not json}",  # 5
        json.dumps(response({"metric": {"__name__": "DCGM_FI_DEV_GPU_UTIL"},
                             "values": [[T0, "1"]]})),  # 6: no GPU label
        good[:40],  # 7: cut off at the end of the file
    ]
    path = tmp_path / "bad.json"
    path.write_text("\n".join(docs))
    chunks = read(path)
    bad = [(b.line, b.reason) for c in chunks for b in c.bad]
    assert [n for n, _ in bad] == [1, 1, 2, 3, 4, 5, 6, 7]
    assert "parse error" in bad[2][1]
    assert "__name__" in bad[3][1]
    assert bad[-1][1].startswith("not a JSON response")
    assert sum(c.rows for c in chunks) == 1


def test_replay_of_an_export(tmp_path: Path) -> None:
    path = tmp_path / "export.json"
    path.write_text(lines_per_query(window(T0, 40), window(T0 + 900, 40)))
    summary = ReplayEngine(tmp_path / "l.sqlite", ReplayOptions()).run([path])
    assert summary.bad_count == 0
    assert summary.gpus[U0].estimator == "dcgm_tensor"
    assert summary.gpus[U1].estimator == "utilization"
    assert summary.max_gap_s == 37.5
    assert summary.gpus[U0].totals.gap_ns > 0  # the hole between the two windows


_MUTATION = st.tuples(st.integers(0, 10**6), st.integers(0, 255))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 1), st.lists(_MUTATION, min_size=1, max_size=4))
def test_fuzz_damage_to_one_gpus_values_leaves_the_others_alone(
        victim: int, mutations: list[tuple[int, int]]) -> None:
    # One response per GPU and window: damage inside one GPU's values array may change
    # or drop that GPU's samples, never another's.
    uuids = (U0, U1)
    docs = []
    for w in range(3):
        for g, u in enumerate(uuids):
            pts = [(T0 + w * 300 + 15 * k, str(50 + k % 40 + g)) for k in range(20)]
            docs.append(json.dumps(response(series("DCGM_FI_DEV_GPU_UTIL", u, g, pts,
                                                   modelName="NVIDIA A100-SXM4-80GB"))))
    clean = "\n".join(docs) + "\n"
    line = docs[2 + victim]  # window 1, the victim GPU
    start = line.index('"values"')
    damaged = bytearray(line.encode())
    for at, value in mutations:
        pos = start + at % (len(damaged) - start)
        if value != ord("\n"):
            damaged[pos] = value
    dirty = clean.replace(line, damaged.decode("latin-1"), 1).encode("latin-1")
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        (d / "clean.json").write_text(clean)
        (d / "dirty.json").write_bytes(dirty)
        a = ReplayEngine(d / "a.sqlite", ReplayOptions(interval_hint_s=15)).run([d / "clean.json"])
        b = ReplayEngine(d / "b.sqlite", ReplayOptions(interval_hint_s=15)).run([d / "dirty.json"])
    other = uuids[1 - victim]
    assert b.gpus[other].totals == a.gpus[other].totals


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=400))
def test_fuzz_arbitrary_bytes(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x.json"
        path.write_bytes(b'{"status":"success","data":' + data)
        for c in PromRangeReader(path, block_bytes=128).chunks():
            assert c.gpu.shape == c.timestamp_ns.shape
