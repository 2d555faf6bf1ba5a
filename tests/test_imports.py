"""Each command loads only what it uses.

Every command runs in a fresh interpreter, as ``flopledger`` does, and names the modules
it ended with: the everyday commands read a config, a ledger or the spec table without
numba (whose import alone takes most of a second), the plotting, web and database
libraries, or the replay engine; the agent loads bcrypt only for basic auth and the
PostgreSQL driver only with a cluster store. The positive cases show the check sees a
module that is loaded.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.ledger_helpers import make_ledger
from tests.pki import bcrypt_hash

# Runs ``flopledger ARGS...`` in this interpreter; prints its status and sys.modules.
PROBE = """
import contextlib, io, json, sys
from agent.cli.main import main
with contextlib.redirect_stdout(io.StringIO()):
    try:
        status = main(sys.argv[1:])
    except SystemExit as e:  # --help
        status = e.code
print(json.dumps({"status": status, "modules": sorted(sys.modules)}))
"""

# What no read command needs: the JIT, plotting, the web exporter and its password
# hashing, the PostgreSQL driver, process inspection, the replay engine, the agent.
NEVER = frozenset({
    "numba", "llvmlite", "matplotlib", "bcrypt", "psycopg", "yaml", "prometheus_client",
    "psutil", "agent.accounting.estimate", "agent.accounting.integrate",
    "agent.accounting.accountant", "agent.replay.engine", "agent.replay.readers.base",
    "agent.reports.chart", "agent.daemon", "agent.sampler", "exporters.web.server",
})
NUMPY = frozenset({"numpy"})
CRYPTOGRAPHY = frozenset({"cryptography"})


def loaded(*args: str) -> set[str]:
    """The modules ``flopledger ARGS`` ended with; asserts it exited 0."""
    done = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True,
                          text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["status"] == 0, done.stderr
    return set(result["modules"])


def tops(modules: set[str]) -> set[str]:
    """The modules and every package above them: ``numba`` for ``numba.core``."""
    out: set[str] = set()
    for name in modules:
        parts = name.split(".")
        out.update(".".join(parts[:n]) for n in range(1, len(parts) + 1))
    return out


@pytest.fixture
def config(tmp_path: Path) -> Path:
    """A config whose state directory holds a small ledger; simulated GPUs."""
    state = tmp_path / "var"
    state.mkdir()
    make_ledger(state / "ledger.sqlite")
    path = tmp_path / "agent.toml"
    path.write_text(f'[agent]\nstate_dir = "{state}"\nsource = "simulated"\n')
    return path


@pytest.mark.parametrize(("command", "also_not"), [
    (("--help",), NUMPY | CRYPTOGRAPHY),
    (("thresholds",), NUMPY | CRYPTOGRAPHY),
    (("runs",), NUMPY),
    (("status",), NUMPY),
    (("models",), NUMPY),
    (("show", "run-a"), NUMPY),
    (("gpus",), NUMPY | CRYPTOGRAPHY),
])
def test_a_read_command_loads_none_of_what_it_does_not_use(
        command: tuple[str, ...], also_not: frozenset[str], config: Path) -> None:
    args = command if command == ("--help",) else (*command, "--config", str(config))
    unused = (NEVER | also_not) & tops(loaded(*args))
    assert not unused, f"flopledger {' '.join(command)} loads {sorted(unused)}"


def agent_modules(tmp_path: Path, extra: str = "") -> set[str]:
    """The modules of an agent that ran for a moment on simulated GPUs."""
    config = tmp_path / "agent.toml"
    config.write_text(f'[agent]\nstate_dir = "{tmp_path / "var"}"\nsource = "simulated"\n'
                      f'interval_s = 0.1\n{extra}')
    return tops(loaded("--log-level", "WARNING", "run", "--config", str(config),
                       "--listen", "127.0.0.1:0", "--exit-after", "0.5"))


AGENT_NEVER = frozenset({"bcrypt", "psycopg", "matplotlib", "agent.replay.engine",
                         "agent.replay.readers.base", "agent.reports.report",
                         "agent.compliance.gate", "agent.ledger.replicate"})


@pytest.mark.e2e
def test_the_agent_loads_neither_bcrypt_nor_the_postgresql_driver_unless_configured(
        tmp_path: Path) -> None:
    modules = agent_modules(tmp_path)
    assert "numba" in modules  # the accounting kernels
    unused = AGENT_NEVER & modules
    assert not unused, f"the agent loads {sorted(unused)}"


@pytest.mark.e2e
def test_the_agent_with_basic_auth_and_a_cluster_store_loads_both(tmp_path: Path) -> None:
    web = tmp_path / "web.yml"
    web.write_text(f"basic_auth_users:\n  prometheus: {bcrypt_hash('secret')}\n")
    # Nothing is contacted at start; the shipper's attempts fail quietly on port 1.
    modules = agent_modules(tmp_path, f'[web]\nconfig_file = "{web}"\n'
                                      '[cluster]\nurl = "postgresql://flopledger@127.0.0.1:1/db"\n')
    assert {"bcrypt", "psycopg"} <= modules


def test_the_node_key_is_read_and_written_as_cryptography_writes_it(tmp_path: Path) -> None:
    """The agent reads and writes its key without cryptography's serialization module
    (which loads bcrypt): the same bytes, and any other form still read by it."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from agent.ledger.signing import load_or_create_key

    path = tmp_path / "node.key"
    key = load_or_create_key(path)
    pkcs8 = (serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
             serialization.NoEncryption())
    assert path.read_bytes() == key.private_bytes(*pkcs8)
    assert load_or_create_key(path).private_bytes_raw() == key.private_bytes_raw()
    # The same key with its base64 split over two lines: read through cryptography.
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0], lines[1][:32], lines[1][32:], lines[2], ""]))
    assert load_or_create_key(path).private_bytes_raw() == key.private_bytes_raw()
    other = tmp_path / "ec.key"
    other.write_bytes(ec.generate_private_key(ec.SECP256R1()).private_bytes(*pkcs8))
    with pytest.raises(ValueError, match="not an Ed25519 private key"):
        load_or_create_key(other)
