"""A small ledger and an in-process ``flopledger`` for the command tests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from agent.cli.main import main
from agent.ledger.signing import load_or_create_key
from agent.ledger.store import Ledger, RunRow
from tests.ledger_helpers import SECOND, T0, record

# (argv...) -> (exit status, stdout, stderr)
Flopledger = Callable[..., tuple[int, str, str]]


@pytest.fixture
def ledger_path(tmp_path: Path) -> Path:
    """Two runs: ``pt`` trains ``base`` (1e15 FLOP); ``ft`` fine-tunes it into ``chat``
    (1e14 FLOP) and declares ``base`` as its base model."""
    path = tmp_path / "ledger.sqlite"
    ledger = Ledger(path, "node-1", load_or_create_key(tmp_path / "node.key"))
    ledger.append([record(0, 0, 5, run="pt", model="base"),
                   record(1, 0, 5, run="ft", model="chat", central=10**14)], T0 + 5 * SECOND,
                  {"pt": RunRow("pt", "base", "pre-training", {}),
                   "ft": RunRow("ft", "chat", "fine-tuning", {"base_models": ["base"]})})
    ledger.close()
    return path


@pytest.fixture
def flopledger(capsys: pytest.CaptureFixture[str]) -> Flopledger:
    """Run the command in this process, as the ``flopledger`` script would."""

    def run(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        status = main(list(args))
        out, err = capsys.readouterr()
        return status, out, err

    return run
