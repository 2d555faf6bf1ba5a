"""Output into a pipe whose reader goes away (``flopledger thresholds | head -1``) ends
quietly: nothing on stderr, status 0 or 141 (SIGPIPE's), never a traceback."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.paths import REPO


def pipeline(args: str, tail: str, tmp: Path, *, buffered: bool) -> tuple[int, str, str]:
    """(flopledger's own status, what the pipe's reader printed, flopledger's stderr)."""
    err_file = tmp / "stderr.txt"
    command = (f"{shlex.quote(sys.executable)} -m agent.cli {args} "
               f"2>{shlex.quote(str(err_file))} {tail}; echo \"status=${{PIPESTATUS[0]}}\" >&2")
    env = {**os.environ, "PYTHONUNBUFFERED": "" if buffered else "1",
           "PYTHONPATH": str(REPO)}
    proc = subprocess.run(["bash", "-c", command], cwd=tmp, env=env, capture_output=True,
                          text=True, timeout=120, check=False)
    status = int(proc.stderr.rsplit("status=", 1)[1])
    return status, proc.stdout, err_file.read_text()


@pytest.mark.parametrize("buffered", [False, True])
@pytest.mark.parametrize("args", ["thresholds", "thresholds --sources", "rules", "--help"])
def test_head_takes_the_first_line_and_the_rest_ends_quietly(args: str, buffered: bool,
                                                             tmp_path: Path) -> None:
    status, out, err = pipeline(args, "| head -1", tmp_path, buffered=buffered)
    # Whether the pipe is closed before the last write is a race: both ends are quiet.
    assert status in (0, 141)
    assert err == ""
    assert len(out.splitlines()) == 1


@pytest.mark.parametrize("buffered", [False, True])
def test_a_pipe_closed_before_the_first_write_exits_141(buffered: bool, tmp_path: Path) -> None:
    status, out, err = pipeline("thresholds", "| head -c 0", tmp_path, buffered=buffered)
    assert (status, out, err) == (141, "", "")
