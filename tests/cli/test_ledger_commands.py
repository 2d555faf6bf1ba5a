"""``flopledger verify``, ``export``, ``runs``, ``show`` and ``models``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.cli.conftest import Flopledger


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
    assert f"wrote {bundle}: 1 records, FLOP 1.0e+15 [9.5e+14 .. 1.1e+15]" in out
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
