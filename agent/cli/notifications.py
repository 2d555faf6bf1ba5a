"""``flopledger notifications``: the dead letters, and sending them again once the
receiver or the channel's configuration is fixed."""

from __future__ import annotations

import argparse

from agent.cli.common import add_ledger_args, ledger_path
from agent.ledger.query import LedgerNotFoundError


def cmd_dead(args: argparse.Namespace) -> int:
    from agent.notify.deadletter import status_lines

    path = ledger_path(args)
    if not path.is_file():
        raise LedgerNotFoundError(f"{path}: no ledger here")
    lines = status_lines(path)
    print("\n".join(lines) if lines else "no dead letters")
    return 0


def cmd_requeue(args: argparse.Namespace) -> int:
    from agent.notify.outbox import Outbox

    path = ledger_path(args)
    if not path.is_file():
        raise LedgerNotFoundError(f"{path}: no ledger here")
    with Outbox(path) as outbox:
        count = outbox.requeue_dead(args.channel)
    where = f"channel {args.channel}" if args.channel else "every channel"
    print(f"requeued {count} dead letter(s) of {where}; a running agent sends them on its "
          "next pass")
    return 0


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``notifications dead`` and ``notifications requeue``."""
    group = sub.add_parser("notifications", help="dead letters: list them, send them again")
    actions = group.add_subparsers(dest="action", required=True)
    dead = actions.add_parser("dead", help="deliveries that can never succeed as configured")
    add_ledger_args(dead)
    dead.set_defaults(func=cmd_dead)
    requeue = actions.add_parser("requeue", help="make dead letters due again")
    add_ledger_args(requeue)
    requeue.add_argument("--channel", help="only this channel's (default: every channel)")
    requeue.set_defaults(func=cmd_requeue)
