"""``status``, ``report`` and ``gate`` on the cluster store (``--ledger
postgresql://...``), on bad input: a malformed URL or a usage error is exit 2, said
before anything connects and with no password in it; a store that cannot be reached,
or a password file that cannot be read, is one line naming the store or the file (exit
1). No server is needed: nothing listens on port 1."""

from __future__ import annotations

from tests.hostile.harness import Case

UNREACHABLE = "postgresql://flopledger@127.0.0.1:1/ledger"
PASSWORD_FILE_CONFIG = '[cluster]\npassword_file = "{dir}/no-such-password"\n'
GATE = ("gate", "base", "--mode", "staged")
COMMANDS = {"status": ("status",), "report": ("report", "--run", "pt"), "gate": GATE,
            "gate-json": (*GATE, "--format", "json")}

CASES: list[Case] = [
    Case(f"unreachable-{name}", (*argv, "--ledger", UNREACHABLE), 1,
         "flopledger: PostgreSQL at 127.0.0.1:1/ledger: cannot connect: Connection refused")
    for name, argv in COMMANDS.items()
]
CASES += [
    Case(f"password-in-url-{name}", (*argv, "--ledger", "postgresql://u:hunter2@h/db"), 2,
         "postgresql://u:***@h/db: the URL carries a password")
    for name, argv in COMMANDS.items()
]
CASES += [
    Case(f"password-file-missing-{name}",
         (*argv, "--config", "{dir}/agent.toml", "--ledger", UNREACHABLE), 1,
         "no-such-password: cannot read the password file",
         files={"agent.toml": PASSWORD_FILE_CONFIG})
    for name, argv in COMMANDS.items()
]
CASES += [
    Case("bad-port-status", ("status", "--ledger", "postgresql://u@127.0.0.1:99999/db"), 2,
         "port '99999' is not a port number"),
    Case("gate-key-fingerprint", (*GATE, "--key-fingerprint", "0123456789abcdef",
                                  "--ledger", UNREACHABLE), 2,
         "--key-fingerprint checks a ledger file or an audit bundle; each node of the cluster "
         "store is checked against its own key in fl_nodes"),
    Case("gate-bundle-and-store", (*GATE, "--bundle", "{dir}/b.json", "--ledger",
                                   UNREACHABLE), 2, "give --ledger or --bundle, not both"),
    Case("report-form-csv", ("report", "--run", "pt", "--form", "eu-notification",
                             "--format", "csv", "--ledger", UNREACHABLE), 2,
         "--form gives --format md or json, not csv"),
    Case("gate-bad-policy", (*GATE, "--policy", "{dir}/release.toml", "--ledger",
                             UNREACHABLE), 2, "release.toml",
         files={"release.toml": "[[tiers]]\nname = 3\n"}),
]
