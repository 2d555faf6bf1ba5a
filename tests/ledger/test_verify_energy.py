"""Energy plausibility: records held to their GPU's physical maximum, in
``agent.ledger.energy`` and as WARNINGs of ``flopledger verify``."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.accounting.records import LedgerRecord
from agent.cli.main import main
from agent.ledger.energy import (
    MIN_WATTS_PER_SM,
    check_energy,
    max_flop_per_joule,
    max_flops,
)
from agent.ledger.signing import load_or_create_key
from agent.ledger.store import Ledger, RunRow
from agent.ledger.verify import verify_ledger
from agent.sources.specs import load_spec_table

SPECS = load_spec_table().specs
H100 = SPECS["h100_sxm"]
BF16_PEAK = H100.peak_flops("bf16_tensor", H100.max_sm_clock_mhz)
HOUR_NS = 3600 * 10**9
T0 = 1_780_000_000 * 10**9


def record(seq: int, flop_central: float, watts: float, *, hours: float = 1.0,
           spec: str | None = "h100_sxm", run: str = "pt", start_h: float = 0.0) -> LedgerRecord:
    """One GPU for ``hours``, drawing ``watts`` on average."""
    span = round(hours * HOUR_NS)
    central = int(flop_central)
    return LedgerRecord(
        seq=seq, kind="interval", node="n", run=run, model="m", category="pre-training",
        gpu_uuid="GPU-0", gpu_index=0, start_ns=T0 + round(start_h * HOUR_NS),
        end_ns=T0 + round(start_h * HOUR_NS) + span, flop_low=int(central * 0.95),
        flop_central=central, flop_high=int(central * 1.05),
        energy_mj=int(watts * hours * 3600 * 1e3), samples=int(hours * 3600),
        covered_ns=span, gap_ns=0, estimator="gpm_tensor",
        assumptions={"spec": spec, "precision": "bf16", "estimators": {"gpm_tensor": 1}})


def test_the_bounds_come_from_the_spec_row() -> None:
    # H100 SXM: fp8 8192 FLOP per clock per SM x 132 SMs x 1980 MHz, 5% clock allowance.
    assert max_flops(H100) == pytest.approx(8192 * 132 * 1980e6 * 1.05)
    assert max_flop_per_joule(H100) == pytest.approx(max_flops(H100) / (MIN_WATTS_PER_SM * 132))


def test_a_plausible_record_gives_nothing() -> None:
    check = check_energy([record(0, 0.5 * BF16_PEAK * 3600, 650)], SPECS)
    assert check.findings() == []
    assert check.checked == 1


def test_more_compute_than_the_time_allows() -> None:
    # 1.2 x the GPU's fastest possible rate over the hour, at a power that allows it.
    check = check_energy([record(0, 0.5 * BF16_PEAK * 3600, 650),
                          record(7, 1.2 * max_flops(H100) * 3600, 700, start_h=1)], SPECS)
    (finding,) = check.findings()
    assert (finding.check, finding.run, finding.records, finding.first_seq) == ("time", "pt", 1, 7)
    assert finding.ratio == pytest.approx(1.2, rel=1e-6)
    assert "more compute than the time allows" in finding.message


def test_more_compute_than_the_energy_allows() -> None:
    # Half the bf16 peak for an hour is possible in time, but not on 10 W.
    check = check_energy([record(3, 0.5 * BF16_PEAK * 3600, 10)], SPECS)
    (finding,) = check.findings()
    assert finding.check == "energy"
    assert finding.ratio == pytest.approx(0.5 * BF16_PEAK / 10 / max_flop_per_joule(H100),
                                          rel=1e-6)
    assert "more compute than the energy allows" in finding.message


def test_findings_are_grouped_per_run_with_the_worst_named() -> None:
    rows = [record(i, (1.1 + i / 10) * max_flops(H100) * 3600, 700, start_h=i)
            for i in range(5)]
    (finding,) = check_energy(rows, SPECS).findings()
    assert (finding.records, finding.first_seq) == (5, 0)
    assert finding.ratio == pytest.approx(1.5, rel=1e-6)


def test_low_efficiency_over_an_hour_suggests_an_undeclared_precision() -> None:
    # 0.5% of the bf16 peak at 600 W: powered, and barely any counted tensor work.
    low = [record(0, 0.005 * BF16_PEAK * 3600, 600)]
    (finding,) = check_energy(low, SPECS).findings()
    assert finding.check == "low-efficiency"
    assert finding.ratio == pytest.approx(0.005, rel=1e-6)
    assert "FLOPLEDGER_PRECISION" in finding.message
    # Under an hour of it is not judged; 2% of the peak is not implausible.
    assert check_energy([record(0, 0.005 * BF16_PEAK * 1800, 600, hours=0.5)],
                        SPECS).findings() == []
    assert check_energy([record(0, 0.02 * BF16_PEAK * 3600, 600)], SPECS).findings() == []


def test_records_without_a_table_row_or_energy_are_not_judged_on_energy() -> None:
    check = check_energy([record(0, 1e30, 700, spec=None),
                          record(1, 0.5 * BF16_PEAK * 3600, 0, start_h=1)], SPECS)
    assert check.findings() == []
    assert (check.without_spec, check.without_energy, check.checked) == (1, 1, 0)
    assert "1 on a GPU without a spec-table row (not judged)" in check.summary()


def _ledger(tmp_path: Path, rows: list[LedgerRecord]) -> Path:
    path = tmp_path / "ledger.sqlite"
    ledger = Ledger(path, "n", load_or_create_key(tmp_path / "node.key"))
    ledger.append(rows, T0 + 10 * HOUR_NS, {"pt": RunRow("pt", "m", "pre-training")})
    ledger.close()
    return path


def test_verify_warns_but_passes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _ledger(tmp_path, [record(-1, 0.5 * BF16_PEAK * 3600, 650),
                              record(-1, 0.5 * BF16_PEAK * 3600, 10, start_h=1)])
    report = verify_ledger(path, specs=SPECS)
    assert report.ok
    (warning,) = report.warnings
    assert "record(s) of run pt (first: record 1)" in warning
    assert verify_ledger(path).warnings == []  # no spec table, no judgement
    assert main(["verify", "--ledger", str(path)]) == 0
    out = capsys.readouterr().out
    assert "  WARNING 1 record(s) of run pt (first: record 1) claim up to" in out
    assert out.endswith("OK: every check passed\n")


def test_verify_of_a_plausible_ledger_has_no_warning(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    path = _ledger(tmp_path, [record(-1, 0.5 * BF16_PEAK * 3600, 650)])
    assert main(["verify", "--ledger", str(path)]) == 0
    assert "WARNING" not in capsys.readouterr().out
