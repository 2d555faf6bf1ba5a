"""The client's own virtual environment, with the training libraries its adapters serve.

torch, transformers and lightning are large, and the agent must never depend on them,
so the adapters' tests run in ``.cache/client-venv`` rather than the project's venv.
It is (re)made when missing or when the requirements below change; the client itself
is reinstalled from a copy of ``client/`` once per session, not editable, so the tests
run the distribution as it is installed, and the build leaves nothing in the tree.
"""

from __future__ import annotations

import fcntl
import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.paths import REPO

CLIENT_SOURCE = REPO / "client"
CLIENT_VENV = REPO / ".cache" / "client-venv"
# torch pinned to the release whose CPU build this machine's wheel store holds: an
# unpinned torch resolves to a multi-GB CUDA build. transformers and lightning take the
# newest that pip resolves against it; the lower bounds are the lines the adapters
# were checked against. accelerate is what Trainer needs; setuptools builds the client
# without build isolation.
CLIENT_REQUIREMENTS = (
    "torch==2.13.0",
    "transformers>=5.17",
    "accelerate>=1.10",
    "lightning>=2.6",
    "setuptools>=77",
)
INSTALL_TIMEOUT_S = 1500
_MARKER = CLIENT_VENV / ".requirements-sha256"


def _run(command: list[str], timeout_s: float) -> None:
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s,
                          check=False)
    if done.returncode != 0:
        pytest.fail(f"{' '.join(command)} failed ({done.returncode}):\n"
                    f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}")


def _stamp() -> str:
    text = "\n".join((sys.version, *CLIENT_REQUIREMENTS))
    return hashlib.sha256(text.encode()).hexdigest()


@pytest.fixture(scope="session")
def client_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The client venv's python, with the current client installed."""
    python = CLIENT_VENV / "bin" / "python"
    CLIENT_VENV.parent.mkdir(parents=True, exist_ok=True)
    # Test workers (pytest-xdist) build the venv one at a time; the others wait and use it.
    with (CLIENT_VENV.parent / "client-venv.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        stale = not python.exists() or not _MARKER.exists() or _MARKER.read_text() != _stamp()
        if stale:
            _MARKER.unlink(missing_ok=True)
            _run([sys.executable, "-m", "venv", "--clear", str(CLIENT_VENV)], 120)
            _run([str(python), "-m", "pip", "install", "--quiet", *CLIENT_REQUIREMENTS],
                 INSTALL_TIMEOUT_S)
            _MARKER.write_text(_stamp())
    copy = tmp_path_factory.mktemp("client-source") / "client"
    shutil.copytree(CLIENT_SOURCE, copy,
                    ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    _run([str(python), "-m", "pip", "install", "--quiet", "--no-deps",
          "--no-build-isolation", "--force-reinstall", str(copy)], 300)
    return python
