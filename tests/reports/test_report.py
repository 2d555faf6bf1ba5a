"""`flopledger report`: the figures a regulator asks for, in four formats."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from agent.compliance.thresholds import load_registry
from agent.reports.report import build_report, render_csv, render_markdown
from agent.sources.specs import load_spec_table
from tests.replay.recordings import replayed_smi_ledger, smi_uuid
from tests.sample_ledger import DAY, HOUR_NS, MODEL, RUN, T0, build

HOURS = 6 * DAY


@pytest.fixture(scope="module")
def ledger(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("report") / "ledger.sqlite"
    build(path, HOURS)
    return path


def report(ledger: Path, **kw: str):  # type: ignore[no-untyped-def]
    return build_report({}, load_registry(), load_spec_table(), ledger,
                        now_ns=T0 + HOURS * HOUR_NS, **kw)


def test_report_states_totals_regimes_method_and_verification(ledger: Path) -> None:
    rep = report(ledger, model=MODEL)
    assert rep.flop.low < rep.flop.central < rep.flop.high
    regimes = {r["regime"]: r for r in rep.regimes}
    assert regimes["eu-gpai-indicative"]["met"]
    # A 60-day plan at this scale goes past 1e25: known now, so the EU clock runs.
    assert regimes["eu-art51-systemic-risk"]["will_be_met"]
    assert regimes["eu-art51-systemic-risk"]["deadline_if_known_now"]
    assert rep.method["U_measured"] == pytest.approx(
        rep.flop.central / (rep.gpu_seconds * 989.4e12), rel=1e-9)
    assert rep.cross_check is not None
    text = render_markdown(rep)
    for needed in ("## Total", "## Thresholds", "C = N x L x H x U", "6 x P x D",
                   "## Data quality", "flopledger verify bundle.json --key-fingerprint",
                   "**will be met**"):
        assert needed in text, needed
    doc = json.loads(rep.to_json())
    assert doc["flop"]["central"] == rep.flop.central


def test_data_quality_lists_the_gpus_by_the_basis_of_their_peak(ledger: Path,
                                                                tmp_path: Path) -> None:
    table_only = report(ledger, model=MODEL)
    assert set(table_only.spec_bases) == {"table"}
    assert f"- GPU peaks: all {table_only.gpus} GPU(s) from rows of the spec table" in \
        render_markdown(table_only)
    # A replayed H100 (in the table) and a GPU no table has a row for.
    mixed = replayed_smi_ledger(tmp_path, [("NVIDIA H100 80GB HBM3", 1980),
                                           ("NVIDIA X999", 2000)])
    rep = build_report({}, load_registry(), load_spec_table(), mixed, run="unattributed")
    assert list(rep.spec_bases) == ["ceiling", "table"]
    ceiling = rep.spec_bases["ceiling"]
    assert ceiling["gpus"] == rep.spec_bases["table"]["gpus"] == 1
    assert ceiling["gpu_time_share"] == pytest.approx(0.5)
    (gpu,) = ceiling["not_in_table"]
    assert gpu["gpu"] == smi_uuid(1)
    assert gpu["reason"]
    assert "not_in_table" not in rep.spec_bases["table"]
    text = render_markdown(rep)
    quality = text.split("## Data quality")[1].split("## Verification")[0]
    assert "**GPU peaks not all from the spec table**" in quality
    assert f"  - `{smi_uuid(1)}`: ceiling (spec `{gpu['spec']}`; only a name" in quality
    assert smi_uuid(0) not in quality
    assert "no table peak for 50% of the GPU time (ceiling specs: not in the spec table)" \
        in rep.method["H_source"]
    assert json.loads(rep.to_json())["spec_bases"]["ceiling"]["not_in_table"][0]["gpu"] == \
        smi_uuid(1)


def test_csv_is_the_cumulative_timeline(ledger: Path) -> None:
    rows = list(csv.DictReader(io.StringIO(render_csv(report(ledger, run=RUN)))))
    assert len(rows) == HOURS
    central = [int(r["flop_central"]) for r in rows]
    assert central == sorted(central)
    assert int(rows[-1]["flop_low"]) <= central[-1] <= int(rows[-1]["flop_high"])


def test_unknown_subject_is_a_clear_error(ledger: Path) -> None:
    with pytest.raises(ValueError, match="no records for run nope"):
        report(ledger, run="nope")


def test_cli_writes_markdown_with_its_chart(ledger: Path, tmp_path: Path) -> None:
    out = tmp_path / "report.md"
    subprocess.run([sys.executable, "-m", "agent.cli", "report", "--model", MODEL, "--ledger",
                    str(ledger), "-o", str(out), "--chart"], check=True, timeout=120,
                   capture_output=True)
    assert "![cumulative compute](report.png)" in out.read_text()
    png = out.with_suffix(".png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(png) > 20_000
