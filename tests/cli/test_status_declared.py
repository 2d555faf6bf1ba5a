"""``flopledger status``: declared compute for the tokens processed so far against the
measured compute up to the same moment, per run."""

from __future__ import annotations

from pathlib import Path

from agent import figures
from agent.reports.processed import PROCESSED_FLAG
from tests.cli.conftest import Flopledger
from tests.cli.test_threshold_commands import config_with_registry
from tests.ledger_helpers import T0
from tests.reports.declared_ledger import RUNS, TOKENS_AT_NS, declared_ledger

HEADER = ("declared compute, as the trainers reported it, against the measured compute up "
          "to the moment they counted their tokens:")


def status_lines(flopledger: Flopledger, tmp_path: Path, ledger: Path) -> list[str]:
    code, out, _ = flopledger("status", "--config", str(config_with_registry(tmp_path)),
                              "--ledger", str(ledger))
    assert code == 0
    return out.splitlines()


def declared_section(lines: list[str]) -> dict[str, str]:
    """run -> its line, of the declared section."""
    start = lines.index(HEADER)
    out = {}
    for line in lines[start + 1:]:
        if not line.startswith("  run "):
            break
        run, _, text = line.removeprefix("  run ").partition(": ")
        out[run] = text
    return out


def test_status_compares_declared_with_measured_compute(tmp_path: Path,
                                                       flopledger: Flopledger) -> None:
    lines = status_lines(flopledger, tmp_path, declared_ledger(tmp_path))
    runs = declared_section(lines)
    at = figures.when(TOKENS_AT_NS)
    assert runs["agree"] == (f"510,000 tokens processed at {at}; declared 3.1e+15 FLOP "
                             "(6 x P x D) vs measured 3.0e+15 [2.8e+15 .. 3.2e+15] FLOP; "
                             "+2.0%; within the band")
    assert runs["off"] == (f"700,000 tokens processed at {at}; declared 4.2e+15 FLOP "
                           "(6 x P x D) vs measured 3.0e+15 [2.8e+15 .. 3.2e+15] FLOP; "
                           f"+40.0%; {PROCESSED_FLAG}")
    assert runs["no-params"] == "declared no parameter count"
    assert "env-only" not in runs  # declared without the client: nothing to say
    assert lines[-1].startswith("fractions use the high estimate; ledger head ")


def test_status_reads_the_open_records_too(tmp_path: Path, flopledger: Flopledger) -> None:
    # Tokens counted at 12.5 s: the sealed records end at 10 s, the open ones at 15 s;
    # status, unlike a report, counts the open ones, so its measured figure reaches 12.5 s.
    late = {"late": {**RUNS["agree"], "progress.updated_ns": T0 + 12_500_000_000}}
    runs = declared_section(status_lines(flopledger, tmp_path, declared_ledger(tmp_path, late)))
    assert "vs measured 5.0e+15 [4.7e+15 .. 5.3e+15] FLOP; -38.8%; " + PROCESSED_FLAG \
        in runs["late"]
    assert "records up to" not in runs["late"]


def test_status_without_declarations_has_no_declared_section(
        ledger_path: Path, tmp_path: Path, flopledger: Flopledger) -> None:
    assert HEADER not in status_lines(flopledger, tmp_path, ledger_path)
