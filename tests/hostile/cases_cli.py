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
_H100_WEEK = ("--gpu", "h100_sxm", "--gpus", "8", "--duration", "7d")


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
    # The planning calculator: a plan that cannot be what was meant is a usage error
    # (exit 2) naming its flag, never a figure off by a factor of 40.
    Case("estimate-utilization-above-one", ("estimate", *_H100_WEEK, "--utilization", "40"),
         2, "--utilization: '40' is outside (0, 1] (0 < MFU <= 100%); for 40 percent write 40%"),
    Case("estimate-utilization-range-end-zero",
         ("estimate", *_H100_WEEK, "--utilization", "0-0.5"), 2, "--utilization: '0' is outside"),
    Case("estimate-gpu-hours-with-gpus",
         ("estimate", "--gpu", "h100_sxm", "--gpu-hours", "1e6", "--gpus", "8"), 2,
         "--gpu-hours: give either --gpu-hours or --gpus with --duration, not both"),
    Case("estimate-gpus-without-duration", ("estimate", "--gpu", "h100_sxm", "--gpus", "8"),
         2, "--duration: needed with --gpus"),
    Case("estimate-active-above-total",
         ("estimate", "--params", "7e9", "--active-params", "70e9", "--tokens", "1e12"), 2,
         "--active-params: 70e9 is above --params 7e9"),
    Case("estimate-gpu-without-a-row",
         ("estimate", "--gpu", "NVIDIA Z9000", "--gpus", "8", "--duration", "7d"), 2,
         "give its dense peak with --peak-tflops, or see how it would be resolved: "
         "flopledger gpus --resolve 'NVIDIA Z9000'"),
    Case("estimate-partial-attention-term",
         ("estimate", "--params", "7e9", "--tokens", "1e12", "--context", "8192"), 2,
         "--layers: needed with --context for the attention term"),
    Case("estimate-flag-no-method-uses",
         ("estimate", "--params", "7e9", "--tokens", "1e12", "--utilization", "0.4"), 2,
         "--utilization: used only by the hardware-based method"),
    Case("estimate-zero-gpus", ("estimate", "--gpu", "h100_sxm", "--gpus", "0",
                                "--duration", "7d"), 2, "--gpus: expected a value above zero"),
    Case("estimate-start-not-a-date", ("estimate", *_H100_WEEK, "--start", "yesterday"), 2,
         "--start: expected a date YYYY-MM-DD"),
    Case("estimate-past-start-deadline-passed",
         ("estimate", "--gpu", "h100_sxm", "--gpus", "16384", "--duration", "90d",
          "--start", "2020-01-01"), 0,
         "the deadline has passed: notice was due by 2020-01-15 00:00:00Z"),
]
