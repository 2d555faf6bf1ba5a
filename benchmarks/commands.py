"""Wall time of the everyday commands, each a fresh process as a user runs it, beside a
bare ``python -c pass`` in the same run.

The commands read a small ledger (``tests.sample_ledger``: a four-node pre-training run,
one record per node and hour) and the simulated GPUs. Each is run once untimed first,
so that the interpreter's compiled bytecode is there, as it is for an installed package
(in a cache directory of the benchmark's own: a checkout may forbid writing it); then
all of them in turn, ``runs`` times, so that a moment of load on the machine falls on
every command alike.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from tests import sample_ledger

BARE = "python -c pass"


@dataclass(frozen=True)
class CommandTimes:
    """Wall seconds of every run of one command."""

    name: str
    seconds: tuple[float, ...]

    @property
    def median_s(self) -> float:
        return statistics.median(self.seconds)

    @property
    def worst_s(self) -> float:
        return max(self.seconds)


@dataclass(frozen=True)
class CommandsResult:
    records: int
    runs: int
    times: tuple[CommandTimes, ...]

    def rows(self) -> list[tuple[str, str]]:
        bare = next(t for t in self.times if t.name == BARE)
        out = [("setup", f"fresh processes, {self.runs} runs each in turn, bytecode compiled; "
                         f"a ledger of {self.records} records, simulated GPUs")]
        for t in self.times:
            ratio = "" if t is bare else f"; {t.median_s / bare.median_s:.1f} x bare Python"
            out.append((t.name, f"median {t.median_s * 1e3:.0f} ms, worst "
                                f"{t.worst_s * 1e3:.0f} ms{ratio}"))
        return out


def compiled_env(cache_dir: Path) -> dict[str, str]:
    """This environment, with Python's compiled bytecode kept in ``cache_dir`` (and
    written even where ``PYTHONDONTWRITEBYTECODE`` is set): after a first run, a command
    starts as it does from an installed package, without compiling its sources."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(cache_dir)
    return env


def _commands(config: Path) -> list[tuple[str, list[str]]]:
    flopledger = [sys.executable, "-m", "agent.cli"]
    with_config = ["--config", str(config)]
    return [
        (BARE, [sys.executable, "-c", "pass"]),
        ("flopledger --help", [*flopledger, "--help"]),
        ("flopledger status", [*flopledger, "status", *with_config]),
        ("flopledger runs", [*flopledger, "runs", *with_config]),
        ("flopledger thresholds", [*flopledger, "thresholds", *with_config]),
        ("flopledger gpus", [*flopledger, "gpus", *with_config]),
    ]


def _run(argv: list[str], env: dict[str, str]) -> float:
    """Wall seconds of one run.

    Raises:
        RuntimeError: the command failed (its stderr is in the message).
    """
    start = time.perf_counter()
    done = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                          env=env, check=False)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited with {done.returncode}: {done.stderr}")
    return elapsed


def bench_commands(runs: int = 10, hours: int = 48) -> CommandsResult:
    """Time ``status``, ``runs``, ``thresholds``, ``gpus`` and ``--help`` against
    ``python -c pass``, ``runs`` times each, on ``hours`` hours of the sample run."""
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp) / "var"
        state.mkdir()
        sample_ledger.build(state / "ledger.sqlite", hours)
        config = Path(tmp) / "agent.toml"
        config.write_text(f'[agent]\nstate_dir = "{state}"\nsource = "simulated"\n')
        env = compiled_env(Path(tmp) / "pycache")
        commands = _commands(config)
        for _, argv in commands:
            _run(argv, env)
        seconds: dict[str, list[float]] = {name: [] for name, _ in commands}
        for _ in range(runs):
            for name, argv in commands:
                seconds[name].append(_run(argv, env))
    return CommandsResult(records=hours * 4, runs=runs,
                          times=tuple(CommandTimes(n, tuple(s)) for n, s in seconds.items()))


if __name__ == "__main__":
    for key, value in bench_commands().rows():
        print(f"  {key:<22}  {value}")
