"""A month of dcgm-exporter series for a real Prometheus: generated, backfilled, served.

64 H100s on 8 nodes, sampled every 60 s (a scrape interval of 15 s would make the
backfill four times larger for nothing the replay does differently; 60 s keeps 30 days
at 11 M samples), labelled as dcgm-exporter labels them (``gpu``, ``UUID``,
``device``, ``modelName``, ``Hostname``, plus Prometheus' ``instance`` and ``job``),
with ``hpc_job`` (dcgm-exporter's HPC job mapping) while a Slurm job holds the node:
eight jobs over the month, each on a set of whole nodes, idle time between them, and
one node whose exporter was down for three hours. Series: ``DCGM_FI_DEV_GPU_UTIL``,
``DCGM_FI_DEV_SM_CLOCK``, ``DCGM_FI_PROF_PIPE_TENSOR_ACTIVE`` and
``DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION`` (the energy counter makes power redundant).
Deterministic (a seeded generator per GPU), from 2025-09-01 00:00 UTC.

:func:`cached_blocks` writes OpenMetrics text (a file per few days, to keep the disk
and promtool's memory small), turns it into TSDB blocks with ``promtool tsdb
create-blocks-from openmetrics`` and keeps the blocks, keyed by this file's text and
promtool's version, so that later runs only copy them; :func:`prometheus` serves a copy.
"""

from __future__ import annotations

import calendar
import contextlib
import hashlib
import itertools
import os
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tests.agentproc import free_port, stop

PROMETHEUS = shutil.which("prometheus")
PROMTOOL = shutil.which("promtool")
START_S = calendar.timegm((2025, 9, 1, 0, 0, 0))
INTERVAL_S = 60
NODES = 8
GPUS_PER_NODE = 8
MODEL = "NVIDIA H100 80GB HBM3"
NAMES = ("DCGM_FI_DEV_SM_CLOCK", "DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE",
         "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION")
DAY_MIN = 1440
# (Slurm job, nodes, first minute, end minute): whole nodes, never two jobs on one node.
JOBS = (
    (41001, range(0, 8), 700, 6 * DAY_MIN + 133),
    (41002, range(0, 4), 7 * DAY_MIN + 17, 15 * DAY_MIN + 421),
    (41003, range(4, 8), 7 * DAY_MIN + 301, 12 * DAY_MIN + 59),
    (41004, range(4, 6), 13 * DAY_MIN + 5, 20 * DAY_MIN + 800),
    (41006, range(6, 8), 13 * DAY_MIN + 611, 19 * DAY_MIN + 1001),
    (41005, range(0, 8), 20 * DAY_MIN + 1200, 25 * DAY_MIN + 1000),
    (41007, range(0, 2), 26 * DAY_MIN + 3, 29 * DAY_MIN + 720),
    (41008, range(2, 8), 26 * DAY_MIN + 290, 29 * DAY_MIN + 1300),
)
OUTAGE = (3, 10 * DAY_MIN + 200, 10 * DAY_MIN + 380)  # node, first and end minute
FILE_DAYS = 5


@dataclass(frozen=True)
class Dataset:
    """``days`` of the series from :data:`START_S` (jobs and the outage past the end are
    cut off)."""

    days: int = 30

    @property
    def minutes(self) -> int:
        return self.days * DAY_MIN

    @property
    def end_s(self) -> int:
        """The last sample's time."""
        return START_S + (self.minutes - 1) * INTERVAL_S

    def samples(self) -> int:
        """GPU samples a range query with step 60 s over the whole set returns: every
        minute of every GPU, less the outage, plus the 5 steps Prometheus' 5-minute
        lookback (both ends included) repeats the last sample before it."""
        _, a, b = OUTAGE
        lost = max(0, min(b, self.minutes) - a) if a < self.minutes else 0
        return NODES * GPUS_PER_NODE * self.minutes - GPUS_PER_NODE * lost + (
            GPUS_PER_NODE * 5 if lost else 0)


def uuid(gpu: int) -> str:
    h = hashlib.sha256(f"flopledger-promdata/{gpu}".encode()).hexdigest()
    return f"GPU-{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"


def host(node: int) -> str:
    return f"gpu-node-{node + 1:02d}"


def runs(ds: Dataset) -> set[str]:
    """The run ids the replay gives the jobs inside ``ds``."""
    return {f"slurm-{job}" for job, _, a, _ in JOBS if a < ds.minutes}


def _job_of(ds: Dataset) -> np.ndarray:
    """Per node and minute: the Slurm job holding it, 0 idle, -1 no exporter."""
    out = np.zeros((NODES, ds.minutes), dtype=np.int64)
    for job, nodes, a, b in JOBS:
        for n in nodes:
            out[n, a:b] = job
    node, a, b = OUTAGE
    out[node, a:b] = -1
    return out


def _values(ds: Dataset, gpu: int, busy: np.ndarray) -> dict[str, list[str]]:
    """The four series of one GPU, per minute, as the text the exporter prints."""
    rng = np.random.default_rng(7919 * (gpu + 1))
    n = busy.shape[0]
    util = np.where(busy, rng.integers(93, 101, n), rng.choice([0, 0, 0, 1], n))
    clock = np.where(busy, rng.choice([1980, 1980, 1980, 1980, 1965, 1950, 1755], n), 345)
    tensor = np.where(busy, rng.uniform(0.30, 0.62, n), 0.0)
    power_w = np.where(busy, rng.uniform(520.0, 700.0, n), rng.uniform(68.0, 75.0, n))
    energy_mj = 3_000_000_000 + 12_345_678 * gpu + np.cumsum(
        np.rint(power_w * INTERVAL_S * 1000).astype(np.int64))
    return {"DCGM_FI_DEV_SM_CLOCK": list(map(str, clock.tolist())),
            "DCGM_FI_DEV_GPU_UTIL": list(map(str, util.tolist())),
            "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE": [f"{x:.6f}" for x in tensor.tolist()],
            "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION": list(map(str, energy_mj.tolist()))}


def write_openmetrics(ds: Dataset, directory: Path) -> list[Path]:
    """The data set as OpenMetrics text, one file per :data:`FILE_DAYS` days."""
    jobs = _job_of(ds)
    stamps = [str(START_S + INTERVAL_S * m) for m in range(ds.minutes)]
    per_gpu = []
    for g in range(NODES * GPUS_PER_NODE):
        node, index = divmod(g, GPUS_PER_NODE)
        base = (f'gpu="{index}",UUID="{uuid(g)}",device="nvidia{index}",modelName="{MODEL}",'
                f'Hostname="{host(node)}",instance="10.20.0.{11 + node}:9400",'
                'job="dcgm-exporter"')
        per_gpu.append((base, jobs[node], _values(ds, g, jobs[node] > 0)))
    paths = []
    for first in range(0, ds.minutes, FILE_DAYS * DAY_MIN):
        last = min(ds.minutes, first + FILE_DAYS * DAY_MIN)
        path = directory / f"dcgm-{first // DAY_MIN:02d}.om"
        with path.open("w") as f:
            for name in NAMES:
                f.write(f"# TYPE {name} gauge\n")
                for base, job_of, values in per_gpu:
                    column = values[name]
                    for a, b, job in _segments(job_of, first, last):
                        labels = base if job == 0 else f'{base},hpc_job="{job}"'
                        prefix = f"{name}{{{labels}}} "
                        f.write("".join([prefix + v + " " + t + "\n"
                                         for v, t in zip(column[a:b], stamps[a:b],
                                                         strict=True)]))
            f.write("# EOF\n")
        paths.append(path)
    return paths


def _segments(job_of: np.ndarray, first: int, last: int) -> Iterator[tuple[int, int, int]]:
    """Stretches [a, b) of minutes with one label set (a job, or idle), the exporter up."""
    part = job_of[first:last]
    cuts = [0, *(np.flatnonzero(np.diff(part)) + 1).tolist(), part.shape[0]]
    for a, b in itertools.pairwise(cuts):
        if part[a] >= 0:
            yield first + a, first + b, int(part[a])


def backfill(ds: Dataset, blocks: Path) -> None:
    """TSDB blocks of ``ds`` in ``blocks`` (a day per block), two promtools at a time."""
    assert PROMTOOL is not None
    blocks.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="promdata-") as tmp:
        texts = write_openmetrics(ds, Path(tmp))

        def one(path: Path) -> None:
            subprocess.run([PROMTOOL, "tsdb", "create-blocks-from", "openmetrics", "-q",
                            "--max-block-duration=24h", str(path), str(blocks)],
                           check=True, capture_output=True, text=True)
            path.unlink()

        with ThreadPoolExecutor(2) as pool:
            list(pool.map(one, texts))


def cached_blocks(ds: Dataset, cache: Path) -> Path:
    """The blocks of ``ds``, built once per version of this file and of promtool."""
    assert PROMTOOL is not None
    version = subprocess.run([PROMTOOL, "--version"], capture_output=True, text=True).stdout
    key = hashlib.sha256(Path(__file__).read_bytes() + version.encode()).hexdigest()[:16]
    done = cache / f"{ds.days}d-{key}"
    if not done.is_dir():
        cache.mkdir(parents=True, exist_ok=True)
        building = Path(tempfile.mkdtemp(prefix="building-", dir=cache))
        backfill(ds, building)
        with contextlib.suppress(OSError):  # another run finished first: use its blocks
            building.rename(done)
        shutil.rmtree(building, ignore_errors=True)
    return done


@dataclass(frozen=True)
class Server:
    url: str
    log: Path


@contextlib.contextmanager
def prometheus(blocks: Path, directory: Path, web_config: Path | None = None,
               args: Sequence[str] = ()) -> Iterator[Server]:
    """A real Prometheus serving a copy of ``blocks`` on a free port, scraping nothing;
    retention long enough to keep a 2025 data set."""
    assert PROMETHEUS is not None
    data = directory / "data"
    shutil.copytree(blocks, data)
    config = directory / "prometheus.yml"
    config.write_text("global: {scrape_interval: 1m}\n")
    port = free_port()
    scheme = "http"
    cmd = [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={data}",
           "--storage.tsdb.retention.time=20y", f"--web.listen-address=127.0.0.1:{port}",
           "--log.level=warn", *args]
    if web_config is not None:
        cmd.append(f"--web.config.file={web_config}")
        scheme = "https" if "cert_file" in web_config.read_text() else "http"
    log = directory / "prometheus.log"
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, text=True)
        try:
            _wait_listening(port, proc, log)
            yield Server(f"{scheme}://127.0.0.1:{port}", log)
        finally:
            stop(proc, 20)


def _wait_listening(port: int, proc: subprocess.Popen[str], log: Path) -> None:
    """Until Prometheus has opened its storage and answers (any HTTP answer counts:
    with TLS or auth on, a bare request is refused, but it is up)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"prometheus exited: {log.read_text()[-2000:]}")
        for scheme in ("http", "https"):
            try:
                with urllib.request.urlopen(f"{scheme}://127.0.0.1:{port}/-/ready",
                                            timeout=2):
                    return
            except urllib.error.HTTPError:
                return
            except (OSError, ValueError):
                continue
        time.sleep(0.1)
    raise TimeoutError(f"prometheus did not come up: {log.read_text()[-2000:]}")


def export_query_range(url: str, start_s: int, end_s: int, step_s: int, path: Path,
                       names: Sequence[str] = NAMES, selector: str = "") -> None:
    """What ``curl .../api/v1/query_range ... >> export.json`` saves: one compact answer
    per name and window of at most 11,000 steps, one per line."""
    with path.open("wb") as out:
        t = start_s
        while t <= end_s:
            end = min(end_s, t + 10_999 * step_s)
            for name in names:
                query = urllib.parse.urlencode({
                    "query": f"{name}{{{selector}}}" if selector else name,
                    "start": str(t), "end": str(end), "step": str(step_s)})
                with urllib.request.urlopen(f"{url}/api/v1/query_range?{query}",
                                            timeout=300) as r:
                    out.write(r.read().rstrip(b"\n") + b"\n")
            t = end + step_s


def ensure_env() -> dict[str, str]:
    """The environment a ``python -m agent.cli`` subprocess needs to import the tree."""
    from tests.paths import REPO

    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [
        str(REPO), os.environ.get("PYTHONPATH")]))}
