"""``flopledger verify``, ``export``, ``runs``, ``show`` and ``models``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.cli.conftest import Flopledger
from tests.ledger.unsealed import sealed_and_open
from tests.replay.recordings import replayed_smi_ledger, smi_uuid


def cli(*args: str) -> str:
    result = subprocess.run([sys.executable, "-m", "agent.cli", *args], capture_output=True,
                            text=True, check=False, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_runs_show_and_models_commands(ledger_path: Path) -> None:
    runs = cli("runs", "--ledger", str(ledger_path))
    assert "pt" in runs
    assert "ft" in runs
    assert "1.0e+15" in runs
    show = cli("show", "pt", "--ledger", str(ledger_path))
    assert "FLOP      1.0e+15 [9.5e+14 .. 1.1e+15]" in show
    assert "GPU-00000000" in show
    models = cli("models", "--ledger", str(ledger_path))
    # chat inherits base's compute through the base_models its run declared.
    assert "chat: 1 run(s), inherits from base" in models
    assert "cumulative         1.1e+15" in models


def test_runs_and_show_flag_figures_resting_on_gpus_off_the_table(
        ledger_path: Path, tmp_path: Path, flopledger: Flopledger) -> None:
    # A replayed H100 (in the table) and a GPU no table has a row for.
    (tmp_path / "replayed").mkdir()
    ledger = replayed_smi_ledger(tmp_path / "replayed", [("NVIDIA H100 80GB HBM3", 1980),
                                                         ("NVIDIA X999", 2000)])
    status, out, _ = flopledger("runs", "--ledger", str(ledger))
    assert status == 0
    assert out.splitlines()[0].split()[-1] == "spec"
    (row,) = [line for line in out.splitlines() if line.startswith("unattributed")]
    assert row.endswith("ceiling 50%, table 50%")
    assert "WARNING: the figures of 1 run(s) rest on GPUs without a row in the spec table" \
        in out
    status, out, _ = flopledger("show", "unattributed", "--ledger", str(ledger))
    assert status == 0
    assert "spec      ceiling 50%, table 50% (samples per basis" in out
    assert "WARNING   these figures rest on GPUs without a row in the spec table" in out
    per_gpu = {line.split()[0]: line for line in out.split("per GPU:\n")[1].splitlines()
               if line.startswith("  GPU-")}
    assert "NOT IN THE SPEC TABLE: ceiling 100% (" in per_gpu[smi_uuid(1)]
    assert "NOT IN THE SPEC TABLE" not in per_gpu[smi_uuid(0)]
    # A ledger of table GPUs only says so, and warns of nothing.
    status, out, _ = flopledger("runs", "--ledger", str(ledger_path))
    assert "WARNING" not in out
    table = out.split("\nledger    ")[0]
    assert all(line.endswith(" table") for line in table.splitlines()[1:])
    status, out, _ = flopledger("show", "pt", "--ledger", str(ledger_path))
    assert "spec      table (samples per basis" in out
    assert "NOT IN THE SPEC TABLE" not in out


def test_models_include_the_lineage_of_the_config(ledger_path: Path, tmp_path: Path,
                                                  flopledger: Flopledger) -> None:
    config = tmp_path / "agent.toml"
    config.write_text('[models.base]\nbase_models = ["external"]\n'
                      '[models.external]\ndeclared_flop = 1e20\n')
    status, out, _ = flopledger("models", "--config", str(config), "--ledger", str(ledger_path))
    assert status == 0
    assert "chat: 1 run(s), inherits from base, external" in out
    assert "external: 0 run(s)" in out
    assert "cumulative         1.0e+20" in out


def test_the_ledger_defaults_to_the_config_state_dir(ledger_path: Path, tmp_path: Path,
                                                     flopledger: Flopledger) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(f'[agent]\nstate_dir = "{ledger_path.parent}"\n')
    status, out, _ = flopledger("runs", "--config", str(config))
    assert status == 0
    assert "pt " in out


def test_an_unknown_run_or_a_missing_ledger_exits_1(ledger_path: Path, tmp_path: Path,
                                                    flopledger: Flopledger) -> None:
    status, out, err = flopledger("show", "nope", "--ledger", str(ledger_path))
    assert (status, out) == (1, "")
    assert f"no run 'nope' in {ledger_path}" in err
    status, _, err = flopledger("runs", "--ledger", str(tmp_path / "missing.sqlite"))
    assert status == 1
    assert "no ledger at" in err


def test_an_exported_bundle_verifies_and_an_edited_one_fails(
    ledger_path: Path, tmp_path: Path, flopledger: Flopledger
) -> None:
    bundle = tmp_path / "bundle.json"
    status, out, _ = flopledger("export", "--run", "pt", "--ledger", str(ledger_path),
                                "-o", str(bundle))
    assert status == 0
    assert f"wrote {bundle}: 1 records, 0 statements, FLOP 1.0e+15 [9.5e+14 .. 1.1e+15]" in out
    status, out, _ = flopledger("verify", str(bundle))
    assert status == 0
    assert "audit bundle" in out
    assert out.rstrip().endswith("OK: every check passed")
    doc = json.loads(bundle.read_text())
    doc["totals"]["flop_central"] += 1
    bundle.write_text(json.dumps(doc))
    status, out, _ = flopledger("verify", str(bundle))
    assert status == 1
    assert "FAILED" in out


def test_verify_a_ledger_with_the_wrong_key_fails(ledger_path: Path,
                                                  flopledger: Flopledger) -> None:
    status, out, _ = flopledger("verify", "--ledger", str(ledger_path))
    assert status == 0
    assert f"ledger {ledger_path}: 2 records, 1 signed tree heads" in out
    status, out, _ = flopledger("verify", str(ledger_path), "--key-fingerprint", "0" * 16)
    assert status == 1
    assert "FAIL " in out


def _after(text: str, prefix: str) -> str:
    """The rest of the one line of ``text`` that starts with ``prefix``."""
    (line,) = [x for x in text.splitlines() if x.startswith(prefix)]
    return line[len(prefix):]


def test_runs_show_export_and_report_state_the_same_signed_and_unsealed_figures(
        tmp_path: Path, flopledger: Flopledger) -> None:
    # pt: 1e15 FLOP under the signed head of 2 records, 3e14 in an open record; run
    # ``new`` only in an open record.
    path = sealed_and_open(tmp_path)
    signed = "1.0e+15 [9.5e+14 .. 1.1e+15]"
    unsealed_pt = "1 record(s), FLOP 3.0e+14 [2.8e+14 .. 3.2e+14], up to "
    status, runs, _ = flopledger("runs", "--ledger", str(path))
    assert status == 0
    assert signed in _after(runs, "pt ")
    assert not [x for x in runs.splitlines() if x.startswith("new ")]
    assert _after(runs, "ledger    ").startswith("2 records under signed head at ")
    assert _after(runs, "unsealed  ").startswith(
        "run(s) new, pt: 2 record(s), FLOP 3.1e+14 [2.9e+14 .. 3.3e+14], up to ")

    status, show, _ = flopledger("show", "pt", "--ledger", str(path))
    assert status == 0
    assert _after(show, "FLOP      ").startswith(signed)
    assert _after(show, "ledger    ") == _after(runs, "ledger    ")
    pt_text = _after(show, "unsealed  run(s) pt: ").split("; ")[0]
    assert pt_text.startswith(unsealed_pt)

    bundle = tmp_path / "pt.json"
    status, export, _ = flopledger("export", "--run", "pt", "--ledger", str(path),
                                   "-o", str(bundle))
    assert status == 0
    assert f"1 records, 0 statements, FLOP {signed}, under the signed head of 2 records" in export
    assert _after(export, "left out ").startswith(pt_text + ": not yet under a signed head")
    assert json.loads(bundle.read_text())["totals"]["flop_central"] == 10**15

    status, md, _ = flopledger("report", "--run", "pt", "--ledger", str(path))
    assert status == 0
    assert "**1.0e+15 FLOP**" in md
    assert ("This is the total of the 1 record(s) of this run under the ledger's signed "
            "tree head of 2 records") in md
    assert f"Not yet sealed: {pt_text}, " in md
    status, js, _ = flopledger("report", "--run", "pt", "--ledger", str(path),
                               "--format", "json")
    doc = json.loads(js)
    assert doc["flop"]["central"] == 10**15
    assert doc["ledger"]["records"] == 2
    assert doc["ledger"]["unsealed"]["flop_central"] == 3 * 10**14

    # A run with only open records: shown as such, and neither exported nor reported.
    status, show, _ = flopledger("show", "new", "--ledger", str(path))
    assert status == 0
    assert "FLOP      0 under the signed head (no record of this run sealed yet)" in show
    assert _after(show, "unsealed  run(s) new: ").startswith("1 record(s), FLOP 1.0e+13")
    for command in (("export", "--run", "new", "-o", str(tmp_path / "new.json")),
                    ("report", "--run", "new")):
        status, _, err = flopledger(*command, "--ledger", str(path))
        assert status == 1
        assert "no record of run new is under the signed head" in err
        assert "1 record(s), FLOP 1.0e+13" in err
