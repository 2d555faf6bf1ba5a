"""Notification channels: a channel that could never deliver is refused at start, naming
its key; dead letters in a ledger are shown by ``flopledger status``, one per line.

Most delivery faults (a receiver answering 4xx, a hook deleted after start) happen after
start, in the dispatcher's threads, not on a command line: tests/notify covers them.
"""

from __future__ import annotations

from pathlib import Path

from tests.hostile.harness import Case

RUN = ("run", "--config", "{dir}/agent.toml")
SECRET = {"webhook.secret": "s3cret\n"}


def _webhook(url: str) -> dict[str, str | bytes]:
    # TOML basic strings: \n is a newline in the value, \u0416 a Cyrillic letter.
    return {**SECRET, "agent.toml": (
        '[[notify.webhook]]\nname = "compliance"\n'
        f'url = "{url}"\nsecret_file = "webhook.secret"\n')}


def _command(argv0: str) -> str:
    return f'[[notify.command]]\nname = "pager"\nargv = ["{argv0}", "--json"]\n'


def _dead_letter(directory: Path) -> None:
    """A ledger whose outbox holds one dead letter for a name with a newline."""
    from agent.notify.outbox import Outbox
    from tests.ledger_helpers import T0, make_ledger
    from tests.receivers import note

    path = directory / "ledger.sqlite"
    make_ledger(path)
    n = note(subject="Модель\nβ")
    with Outbox(path, ["compliance"]) as outbox:
        outbox.enqueue(n, now_ns=T0)
        outbox.mark_dead(n.key, "compliance", T0, "HTTP 410 Gone from https://hooks.example/x")


# A variable no environment sets: the webhook's secret is unavailable.
UNSET_SECRET = {"agent.toml": '[[notify.webhook]]\nname = "compliance"\n'
                              'url = "https://hooks.example/x"\n'
                              'secret_env = "FLOPLEDGER_HOSTILE_NEVER_SET"\n'}

CASES = [
    Case("notify-webhook-url-not-http", RUN, 2, "notify.webhook[0].url",
         files=_webhook("ftp://hooks.example/flopledger")),
    Case("notify-webhook-url-newline", RUN, 2, "notify.webhook[0].url",
         files=_webhook("https://hooks.example/a\\nX-Injected: 1")),
    Case("notify-webhook-url-non-ascii", RUN, 2, "notify.webhook[0].url",
         files=_webhook("https://hooks.example/\\u0416")),
    Case("notify-webhook-secret-missing", RUN, 2, "notify.webhook[0].secret_file",
         files={"agent.toml": '[[notify.webhook]]\nname = "c"\nurl = "https://h.example/"\n'
                              'secret_file = "nope.secret"\n'}),
    Case("notify-webhook-secret-env-unset", RUN, 2,
         "notify.webhook[0].secret_env: expected an environment variable that is set and "
         "not empty (FLOPLEDGER_HOSTILE_NEVER_SET)", files=UNSET_SECRET),
    # Sending needs the secret; reading the ledger does not.
    Case("notify-status-without-the-secret",
         ("status", "--config", "{dir}/agent.toml", "--ledger", "{dir}/ledger.sqlite"), 0,
         "compliance model:Модель\\nβ|eu-systemic-risk|level:0.8: HTTP 410 Gone",
         files=UNSET_SECRET, setup=_dead_letter,
         may_change=("ledger.sqlite-shm", "ledger.sqlite-wal"), ledger="ledger.sqlite"),
    Case("notify-command-not-on-path", RUN, 2, "notify.command[0].argv",
         files={"agent.toml": _command("no-such-flopledger-hook")}),
    Case("notify-command-not-executable", RUN, 2, "notify.command[0].argv",
         files={"agent.toml": _command("./hook.sh"), "hook.sh": "#!/bin/sh\nexit 0\n"}),
    Case("notify-command-is-a-directory", RUN, 2, "notify.command[0].argv",
         files={"agent.toml": _command("./hooks"), "hooks/README": "not a program\n"}),
    # The read-only open of a WAL ledger may leave its -shm/-wal side files; the ledger
    # itself is unchanged.
    Case("notify-status-shows-dead-letters", ("status", "--ledger", "{dir}/ledger.sqlite"), 0,
         "compliance model:Модель\\nβ|eu-systemic-risk|level:0.8: HTTP 410 Gone",
         setup=_dead_letter, may_change=("ledger.sqlite-shm", "ledger.sqlite-wal"),
         ledger="ledger.sqlite"),
]
