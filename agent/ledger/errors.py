"""The ledger's exceptions, below every module of the layer that raises them."""

from __future__ import annotations


class LedgerError(Exception):
    """The ledger file cannot be used (wrong node, wrong key, corrupt state)."""


class LedgerRefusedError(LedgerError):
    """The agent must not write to this state directory as it is (a damaged ledger,
    another agent holding it, a missing key): nothing was written. Exit status 2."""
