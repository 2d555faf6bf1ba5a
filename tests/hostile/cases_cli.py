"""Command-line and configuration basics."""

from __future__ import annotations

from tests.hostile.harness import Case

CASES = [
    Case("unknown-table", ("run", "--config", "{dir}/agent.toml"), 2,
         "one of the tables", files={"agent.toml": "[nonsense]\nx = 1\n"}),
    Case("config-not-toml", ("status", "--config", "{dir}/agent.toml"), 2,
         "valid TOML", files={"agent.toml": "[agent\n"}),
    Case("config-missing", ("run", "--config", "{dir}/missing.toml"), 2, "not found"),
    Case("status-without-ledger", ("status", "--ledger", "{dir}/none.sqlite"), 1,
         "none.sqlite"),
    Case("verify-not-a-file", ("verify", "{dir}/nothing.json"), 1, "nothing.json"),
]
