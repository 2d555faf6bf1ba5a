"""``flopledger notifications``: list dead letters and send them again."""

from __future__ import annotations

import time
from pathlib import Path

from agent.notify.outbox import Outbox
from tests.cli.conftest import Flopledger
from tests.receivers import T0, note


def test_dead_letters_are_listed_and_requeued_per_channel(tmp_path: Path,
                                                          flopledger: Flopledger) -> None:
    path = tmp_path / "ledger.sqlite"
    with Outbox(path, ["hook", "webhook"]) as outbox:
        n = note(1)
        assert outbox.enqueue(n, T0)
        assert outbox.mark_dead(n.key, "hook", T0 + 1, "HTTP 410 Gone")
        assert outbox.mark_dead(n.key, "webhook", T0 + 1, "HTTP 404 Not Found")
    status, out, _ = flopledger("notifications", "dead", "--ledger", str(path))
    assert status == 0
    assert "410 Gone" in out
    assert "404 Not Found" in out
    status, out, _ = flopledger("notifications", "requeue", "--ledger", str(path),
                                "--channel", "hook")
    assert status == 0
    assert "requeued 1 dead letter(s) of channel hook" in out
    with Outbox(path, ["hook", "webhook"]) as outbox:
        assert [(d.channel, d.reason) for d in outbox.dead_letters()] == [
            ("webhook", "HTTP 404 Not Found")]
        assert [p[0].key for p in outbox.pending("hook", time.time_ns() + 10**9)] == [n.key]
    status, out, _ = flopledger("notifications", "requeue", "--ledger", str(path))
    assert status == 0
    assert "requeued 1 dead letter(s) of every channel" in out
    status, out, _ = flopledger("notifications", "dead", "--ledger", str(path))
    assert out.strip() == "no dead letters"


def test_no_ledger_is_an_error(tmp_path: Path, flopledger: Flopledger) -> None:
    status, _, err = flopledger("notifications", "requeue", "--ledger",
                                str(tmp_path / "none.sqlite"))
    assert status == 1
    assert "no ledger here" in err
    assert not (tmp_path / "none.sqlite").exists()
