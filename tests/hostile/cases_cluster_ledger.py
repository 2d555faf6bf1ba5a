"""The cluster store as ``--ledger`` (``postgresql://...``): a malformed URL is a usage
error (exit 2) said before anything connects, and with no password in it; a store that
cannot be reached, or a password that cannot be read, is one line naming the store or
the file (exit 1). No server is needed: nothing listens on port 1."""

from __future__ import annotations

from tests.hostile.harness import Case

UNREACHABLE = "postgresql://flopledger@127.0.0.1:1/ledger"
PASSWORD_FILE_CONFIG = '[cluster]\npassword_file = "{dir}/no-such-password"\n'

CASES: list[Case] = [
    Case("bad-port", ("runs", "--ledger", "postgresql://u@127.0.0.1:99999/db"), 2,
         "argument --ledger: postgresql://u@127.0.0.1:99999/db: port '99999' is not a port "
         "number"),
    Case("not-a-url", ("verify", "postgres://"), 2, "not a postgresql:// URL"),
    Case("bad-query", ("show", "pt", "--ledger", "postgresql://u@h/db?colour=blue"), 2,
         "not a valid PostgreSQL URL"),
    Case("password-in-url", ("models", "--ledger", "postgresql://u:hunter2@h/db"), 2,
         "postgresql://u:***@h/db: the URL carries a password"),
    Case("password-file-missing", ("runs", "--config", "{dir}/agent.toml", "--ledger",
                                   UNREACHABLE), 1,
         "no-such-password: cannot read the password file",
         files={"agent.toml": PASSWORD_FILE_CONFIG}),
    Case("recover-reads-files", ("recover", "--ledger", UNREACHABLE), 1,
         "recover reads a node's ledger file; runs, show, models, verify, status, report, "
         "gate and export read the cluster store"),
]
CASES += [Case(f"unreachable-{argv[0]}", (*argv, "--ledger", UNREACHABLE), 1,
               "flopledger: PostgreSQL at 127.0.0.1:1/ledger: cannot connect: Connection "
               "refused")
          for argv in (("runs",), ("show", "pt"), ("models",), ("verify",))]

# Cluster audit bundles (``export --ledger postgresql://...``) and what ``verify`` makes of
# a file that claims to be one.
CLUSTER_BUNDLE = '{{"format": "flopledger-cluster-bundle-1", {rest}}}'
CASES += [
    Case("export-unreachable", ("export", "--run", "pt", "--ledger", UNREACHABLE), 1,
         "flopledger: PostgreSQL at 127.0.0.1:1/ledger: cannot connect: Connection refused"),
    Case("export-allow-flagged-on-a-file", ("export", "--run", "pt", "--allow-flagged",
                                            "--ledger", "{dir}/ledger.sqlite"), 2,
         "--allow-flagged is for the cluster store"),
    Case("cluster-bundle-nodes-not-a-list", ("verify", "{dir}/bundle.json"), 1,
         "unreadable or malformed cluster bundle (nodes, node_keys and flagged must be lists)",
         files={"bundle.json": CLUSTER_BUNDLE.format(
             rest='"selection": {"run": "pt"}, "node_keys": [], "totals": {}, "nodes": 5')}),
    Case("cluster-bundle-missing-totals", ("verify", "{dir}/bundle.json"), 1,
         "unreadable or malformed cluster bundle ('totals')",
         files={"bundle.json": CLUSTER_BUNDLE.format(
             rest='"selection": {"run": "pt"}, "node_keys": [], "nodes": []')}),
    Case("cluster-bundle-node-not-a-bundle", ("verify", "{dir}/bundle.json"), 1,
         "FAIL node #0 (key abc): node bundle 0: not a flopledger-audit-bundle-1 file",
         files={"bundle.json": CLUSTER_BUNDLE.format(
             rest='"selection": {"run": "pt"}, "node_keys": ["abc"], "nodes": [5], '
                  '"totals": {}')}),
    Case("cluster-bundle-deeply-nested", ("verify", "{dir}/bundle.json"), 1,
         "unreadable or malformed bundle",
         files={"bundle.json": '{"format": "flopledger-cluster-bundle-1", "nodes": '
                               + "[" * 200_000}),
    Case("cluster-bundle-pinned-key", ("verify", "{dir}/bundle.json", "--key-fingerprint",
                                       "0123456789abcdef"), 2,
         "each node of a cluster bundle is checked against its own key",
         files={"bundle.json": CLUSTER_BUNDLE.format(
             rest='"selection": {"run": "pt"}, "node_keys": [], "nodes": [], "totals": {}')}),
]

# ``gate --bundle`` on a cluster bundle: checked as ``verify`` checks it, before anything
# is decided.
CASES += [
    Case("gate-cluster-bundle-malformed", ("gate", "base", "--mode", "staged", "--bundle",
                                           "{dir}/bundle.json"), 1,
         "bundle.json: unreadable or malformed cluster bundle ('totals')",
         files={"bundle.json": CLUSTER_BUNDLE.format(
             rest='"selection": {"model": "base"}, "node_keys": [], "nodes": []')}),
    Case("gate-cluster-bundle-node-not-a-bundle", ("gate", "base", "--mode", "staged",
                                                   "--bundle", "{dir}/bundle.json"), 1,
         "fails verification: stated totals do not equal the sum of the nodes' records "
         "(and 1 more: `flopledger verify",
         files={"bundle.json": CLUSTER_BUNDLE.format(
             rest='"selection": {"model": "base"}, "node_keys": ["abc"], "nodes": [5], '
                  '"totals": {}')}),
    Case("gate-cluster-bundle-pinned-key", ("gate", "base", "--mode", "staged", "--bundle",
                                            "{dir}/bundle.json", "--key-fingerprint",
                                            "0123456789abcdef"), 2,
         "a cluster bundle holds each node's own",
         files={"bundle.json": CLUSTER_BUNDLE.format(
             rest='"selection": {"model": "base"}, "node_keys": [], "nodes": [], '
                  '"totals": {}')}),
]

# ``cluster --create-schema`` on a store that cannot be reached: one line, exit 1.
CASES += [
    Case("create-schema-unreachable", ("cluster", "--config", "{dir}/cluster.toml",
                                       "--create-schema"), 1,
         "flopledger cluster: PostgreSQL at 127.0.0.1:1/ledger: cannot connect: Connection "
         "refused",
         files={"cluster.toml": f'[cluster]\nurl = "{UNREACHABLE}"\n'}),
]
