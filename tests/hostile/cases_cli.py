"""Command-line and configuration basics, and output into a pipe that closes early
(``| head``): a quiet end with status 141, as a shell reports for SIGPIPE, never a
BrokenPipeError traceback."""

from __future__ import annotations

from pathlib import Path

from tests.hostile.harness import Case

# ``head -c 0`` exits without reading, so the very first write meets a closed pipe
# (``head -1`` would race the writer: a short output may fit the pipe whole).
CLOSED_PIPE = "| head -c 0"
# Opening a WAL ledger read-only may leave its side files; the ledger is unchanged.
LEDGER_SIDE_FILES = ("ledger.sqlite-shm", "ledger.sqlite-wal")


def _ledger(directory: Path) -> None:
    from tests.ledger_helpers import make_ledger

    make_ledger(directory / "ledger.sqlite", runs=("run-a", "run-b"))


def _into_closed_pipe(name: str, *argv: str, ledger: bool = False,
                      buffered: bool = False) -> Case:
    # Buffered, the output meets the closed pipe only when it is flushed at the end.
    env = {"PYTHONUNBUFFERED": ""} if buffered else {}
    if ledger:
        return Case(name, (*argv, "--ledger", "{dir}/ledger.sqlite"), 141, "",
                    setup=_ledger, shell_tail=CLOSED_PIPE, may_change=LEDGER_SIDE_FILES,
                    ledger="ledger.sqlite", env=env)
    return Case(name, argv, 141, "", shell_tail=CLOSED_PIPE, env=env)


CASES = [
    _into_closed_pipe("pipe-thresholds", "thresholds"),
    _into_closed_pipe("pipe-thresholds-sources", "thresholds", "--sources"),
    _into_closed_pipe("pipe-rules", "rules"),
    _into_closed_pipe("pipe-gpus", "gpus", "--source", "simulated"),
    _into_closed_pipe("pipe-thresholds-buffered", "thresholds", buffered=True),
    _into_closed_pipe("pipe-runs-buffered", "runs", ledger=True, buffered=True),
    # argparse writes --help itself and ignores a write error; buffered, the text
    # meets the closed pipe when main flushes it.
    _into_closed_pipe("pipe-help-buffered", "--help", buffered=True),
    Case("pipe-help-unbuffered", ("--help",), 0, "", shell_tail=CLOSED_PIPE),
    _into_closed_pipe("pipe-runs", "runs", ledger=True),
    _into_closed_pipe("pipe-status", "status", ledger=True),
    _into_closed_pipe("pipe-models", "models", ledger=True),
    _into_closed_pipe("pipe-show", "show", "run-a", ledger=True),
    Case("unknown-table", ("run", "--config", "{dir}/agent.toml"), 2,
         "one of the tables", files={"agent.toml": "[nonsense]\nx = 1\n"}),
    Case("config-not-toml", ("status", "--config", "{dir}/agent.toml"), 2,
         "valid TOML", files={"agent.toml": "[agent\n"}),
    Case("config-missing", ("run", "--config", "{dir}/missing.toml"), 2, "not found"),
    Case("status-without-ledger", ("status", "--ledger", "{dir}/none.sqlite"), 1,
         "none.sqlite"),
    Case("verify-not-a-file", ("verify", "{dir}/nothing.json"), 1, "nothing.json"),
]
