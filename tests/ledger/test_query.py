"""Reading a ledger at one moment: the records its signed head covers, the records it
does not cover yet, and a writer committing in the middle of a read."""

from __future__ import annotations

import json
import re
import sqlite3
import threading
from pathlib import Path

import pytest

from agent.ledger import bundle, query
from agent.ledger.bundle import export_bundle, verify_bundle
from agent.ledger.query import LedgerView, read_view
from agent.ledger.schema import connect_read_only
from tests.ledger.unsealed import (
    SEALED_PT_CENTRAL,
    UNSEALED_NEW_CENTRAL,
    UNSEALED_PT_CENTRAL,
    interleave_checkpoints,
    next_checkpoint,
    open_writer,
    sealed_and_open,
)


def test_a_view_splits_the_records_at_its_signed_head(tmp_path: Path) -> None:
    view = read_view(sealed_and_open(tmp_path))
    assert view.head is not None
    assert view.head_size == 2
    assert sorted(r.run for r in view.sealed) == ["ft", "pt"]
    assert view.summaries()["pt"].flop_central == SEALED_PT_CENTRAL
    assert "new" not in view.summaries()
    pt = view.unsealed_of(run="pt")
    assert (pt.records, pt.flop.central, pt.runs) == (1, UNSEALED_PT_CENTRAL, ("pt",))
    base = view.unsealed_of(model="base")
    assert base.flop.central == UNSEALED_PT_CENTRAL + UNSEALED_NEW_CENTRAL
    assert base.runs == ("new", "pt")
    assert view.unsealed_of(run="ft").text() == "none"
    # The runs' declared metadata come from the same read.
    assert view.summaries()["ft"].meta == {"base_models": ["base"]}
    # One run's view holds only that run's records, split at the same head.
    only = read_view(view.path, run="pt")
    assert [r.run for r in only.sealed] == ["pt"]
    assert only.head_size == 2
    assert only.unsealed_of().records == 1


def test_records_appended_after_the_head_are_not_counted_as_under_it(tmp_path: Path) -> None:
    # Only a damaged or hand-edited ledger holds records beyond its latest head: the view
    # still never counts them as signed.
    path = sealed_and_open(tmp_path)
    db = sqlite3.connect(path)
    db.execute("DELETE FROM tree_heads WHERE size = 2")
    db.commit()
    db.close()
    view = read_view(path)
    assert view.head is None
    assert view.sealed == []
    assert view.unsealed_of(run="pt").records == 2


def _view_of_one_moment(view: LedgerView, checkpoints: int) -> None:
    """What a view after ``checkpoints`` checkpoints of :func:`next_checkpoint` holds."""
    assert view.head_size == 2 + 2 * checkpoints
    assert len(view.sealed) == view.head_size
    sums = view.summaries()
    assert sums["pt"].flop_central == SEALED_PT_CENTRAL + checkpoints * UNSEALED_PT_CENTRAL
    new = sums["new"].flop_central if "new" in sums else 0
    assert new == checkpoints * UNSEALED_NEW_CENTRAL
    unsealed = view.unsealed_of()
    assert unsealed.records == 2
    assert unsealed.flop.central == UNSEALED_PT_CENTRAL + UNSEALED_NEW_CENTRAL


def test_a_checkpoint_committed_between_the_reads_statements_changes_nothing_in_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    writer = open_writer(tmp_path)
    done = interleave_checkpoints(monkeypatch, query, writer)
    try:
        view = read_view(writer.path)
        # The agent committed after each of the view's statements: the head, the records,
        # the open records and the runs' metadata are still those of before the first.
        assert done[0] >= 3
        _view_of_one_moment(view, 0)
        monkeypatch.setattr(query, "connect_read_only", connect_read_only)
        _view_of_one_moment(read_view(writer.path), done[0])
    finally:
        writer.close()


def test_an_export_during_a_checkpoint_bundles_one_moment(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    writer = open_writer(tmp_path)
    done = interleave_checkpoints(monkeypatch, bundle, writer)
    out = tmp_path / "bundle.json"
    try:
        summary = export_bundle(writer.path, out, run="pt")
    finally:
        writer.close()
    assert done[0] >= 3
    assert summary["head"]["size"] == 2
    assert summary["totals"]["records"] == 1
    assert summary["totals"]["flop_central"] == SEALED_PT_CENTRAL
    # The run's open record of that moment, said and left out; not a sealed record the
    # agent committed meanwhile.
    assert summary["left_out"].records == 1
    assert summary["left_out"].flop.central == UNSEALED_PT_CENTRAL
    doc = json.loads(out.read_text())
    assert [h["size"] for h in doc["tree_heads"]] == [2]
    assert verify_bundle(out).ok


def test_an_export_bundles_only_what_the_head_covers(tmp_path: Path) -> None:
    path = sealed_and_open(tmp_path)
    summary = export_bundle(path, tmp_path / "pt.json", run="pt")
    assert summary["totals"]["flop_central"] == SEALED_PT_CENTRAL
    assert summary["left_out"].flop.central == UNSEALED_PT_CENTRAL
    report = verify_bundle(tmp_path / "pt.json")
    assert report.ok
    assert report.totals["flop_central"] == SEALED_PT_CENTRAL
    # A run with open records only: nothing a head vouches for, said so.
    said = "no record of run new is under the signed head yet (1 record(s), FLOP 1.0e+13"
    with pytest.raises(ValueError, match=re.escape(said)):
        export_bundle(path, tmp_path / "new.json", run="new")


def test_views_read_while_the_agent_writes_are_each_of_one_moment(tmp_path: Path) -> None:
    writer = open_writer(tmp_path)
    checkpoints = 40
    failures: list[BaseException] = []

    def write() -> None:
        try:
            for k in range(1, checkpoints + 1):
                next_checkpoint(writer, k)
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            failures.append(e)

    thread = threading.Thread(target=write)
    thread.start()
    reads = 0
    try:
        while thread.is_alive() or not reads:
            view = read_view(writer.path)
            _view_of_one_moment(view, (view.head_size - 2) // 2)
            reads += 1
    finally:
        thread.join()
        writer.close()
    assert not failures
    _view_of_one_moment(read_view(writer.path), checkpoints)
