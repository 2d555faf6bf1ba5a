"""A replay of an nvidia-smi log naming real GPUs, spelt as nvidia-smi prints them: every
busy GPU gets a peak (a table row, else a derived or ceiling spec), a high bound above
zero and a central above zero; none is a silent 0 [0 .. 0].

``pytest -s`` prints one line per GPU: name, resolved row, basis, estimator and FLOP
central [low .. high].
"""

from __future__ import annotations

from pathlib import Path

import pytest

from agent import figures
from agent.ledger.query import iter_records, spec_basis
from agent.replay.engine import ReplayEngine, ReplayOptions
from agent.replay.summary import ReplaySummary
from agent.sources.specs import SpecBasis
from tests.replay.recordings import busy_smi_log, smi_uuid

# (name as nvidia-smi prints it, SM clock in MHz: at or under the rated boost clock)
REAL_GPUS: tuple[tuple[str, float], ...] = (
    ("Tesla V100-SXM2-16GB", 1530),
    ("Tesla V100-SXM2-32GB", 1530),
    ("Tesla V100-PCIE-16GB", 1380),
    ("Tesla V100S-PCIE-32GB", 1597),
    ("Tesla T4", 1590),
    ("NVIDIA A100-SXM4-40GB", 1410),
    ("NVIDIA A100-SXM4-80GB", 1410),
    ("NVIDIA A100-PCIE-40GB", 1410),
    ("NVIDIA A100 80GB PCIe", 1410),
    ("NVIDIA A800-SXM4-80GB", 1410),
    ("GRID A100-40C", 1410),
    ("NVIDIA A30", 1440),
    ("NVIDIA A40", 1740),
    ("NVIDIA A10", 1695),
    ("NVIDIA A10G", 1710),
    ("NVIDIA A16", 1755),
    ("NVIDIA A2", 1770),
    ("NVIDIA L4", 2040),
    ("NVIDIA L40", 2490),
    ("NVIDIA L40S", 2520),
    ("NVIDIA H100 80GB HBM3", 1980),
    ("NVIDIA H100 PCIe", 1755),
    ("NVIDIA H100 NVL", 1785),
    ("NVIDIA H800", 1980),
    ("NVIDIA H20", 1980),
    ("NVIDIA H200", 1980),
    ("NVIDIA GH200 480GB", 1980),
    ("NVIDIA B200", 1965),
    ("NVIDIA RTX 6000 Ada Generation", 2505),
    ("NVIDIA RTX A6000", 1800),
    ("NVIDIA GeForce RTX 3090", 1695),
    ("NVIDIA GeForce RTX 4090", 2520),
    ("NVIDIA GeForce RTX 5090", 2407),
    # What NVML calls a MIG device: nvidia-smi's query lists whole GPUs, but a log put
    # together from NVML may carry it.
    ("NVIDIA A100-SXM4-40GB MIG 3g.20gb", 1410),
)
MADE_UP = ("NVIDIA X999", 2000.0)
# Names with a row in the table since before every GPU had one: they must stay on it.
TABLE_ROWS = ("Tesla V100-SXM2-16GB", "NVIDIA A100-SXM4-40GB", "NVIDIA A100-SXM4-80GB",
              "NVIDIA H100 80GB HBM3", "NVIDIA L40S", "NVIDIA L4", "NVIDIA A10", "NVIDIA B200")
SECONDS = 120


@pytest.fixture(scope="module")
def replayed(tmp_path_factory: pytest.TempPathFactory) -> tuple[ReplaySummary, Path]:
    tmp = tmp_path_factory.mktemp("real-names")
    log = tmp / "nvidia-smi.csv"
    log.write_text(busy_smi_log([*REAL_GPUS, MADE_UP], SECONDS))
    ledger = tmp / "ledger.sqlite"
    summary = ReplayEngine(ledger, ReplayOptions(interval_hint_s=1.0)).run([log])
    return summary, ledger


def test_thirty_real_names() -> None:
    names = [n for n, _ in REAL_GPUS]
    assert len(set(names)) == len(names) >= 30
    assert {"Tesla V100S-PCIE-32GB", "NVIDIA A800-SXM4-80GB", "GRID A100-40C",
            "NVIDIA GeForce RTX 4090"} <= set(names)


def test_every_busy_gpu_has_a_peak_and_a_band_above_zero(
        replayed: tuple[ReplaySummary, Path]) -> None:
    summary, _ = replayed
    assert summary.failure is None, summary.failure
    gpus = [*REAL_GPUS, MADE_UP]
    lines = [f"{'name':<34} {'row':<18} {'basis':<8} {'estimator':<12} "
             "FLOP central [low .. high]"]
    for i, (name, _) in enumerate(gpus):
        g = summary.gpus[smi_uuid(i)]
        lines.append(f"{name:<34} {g.spec:<18} {g.basis:<8} {g.estimator:<12} "
                     f"{figures.band(*g.totals.flop)}")
    print("\n" + "\n".join(lines))
    for i, (name, _) in enumerate(gpus):
        g = summary.gpus[smi_uuid(i)]
        low, central, high = g.totals.flop
        assert g.name == name
        assert g.totals.samples == SECONDS, name  # no sample rejected as implausible
        assert high > 0, name
        assert central > 0, name
        assert 0 <= low <= central <= high, name
        assert g.basis in {b.value for b in SpecBasis}, name
        assert g.spec, name
        assert g.estimator == "utilization", name
        if g.basis != SpecBasis.TABLE:
            assert g.reason, name
    for name in TABLE_ROWS:
        i = [n for n, _ in gpus].index(name)
        assert summary.gpus[smi_uuid(i)].basis == SpecBasis.TABLE, name
    assert summary.gpus[smi_uuid(len(REAL_GPUS))].basis == SpecBasis.CEILING


def test_the_summary_and_the_ledger_say_which_gpus_are_off_the_table(
        replayed: tuple[ReplaySummary, Path]) -> None:
    summary, ledger = replayed
    text = summary.format()
    made_up = summary.gpus[smi_uuid(len(REAL_GPUS))]
    off = [g for g in summary.gpus.values() if g.basis != SpecBasis.TABLE]
    assert made_up in off
    assert f"WARNING: {len(off)} of {len(summary.gpus)} GPU(s) have no row in the spec " \
           "table" in text
    row = next(line for line in text.splitlines() if line.strip().startswith(made_up.key))
    assert " ceiling " in row
    assert text.count("NOT IN THE SPEC TABLE: peak from a") == len(off)
    # The ledger's records of each GPU state its basis, so every later reader can.
    bases: dict[str, set[str]] = {}
    for r in iter_records(ledger):
        bases.setdefault(r.gpu_uuid, set()).add(spec_basis(r))
    for g in summary.gpus.values():
        assert bases[g.key] == {g.basis}, g.name
