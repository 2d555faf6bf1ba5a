"""The client spool, read at every checkpoint: what trainers declared becomes signed
statements in the same ledger transaction as the compute, and bindings of their
processes to their runs (docs/client-spool.md).

A spool file is deleted only once its content is committed: a statement in the ledger,
or a progress count inside a committed ``progress`` statement. A checkpoint that fails
keeps its drafts and their files for the next one; a stop between the commit and the
deletion leaves files whose ids the ledger already records as consumed, which are then
deleted without being recorded again. ``attach`` files stay while their process lives,
so that an agent restarted meanwhile binds the process again.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from agent.accounting.attribution import Attributor
from agent.accounting.declared import DeclaredState
from agent.accounting.names import printable
from agent.accounting.records import LedgerRecord
from agent.accounting.runs import RunMeta
from agent.accounting.snapshot import DeclaredRunSnapshot
from agent.ledger.store import Ledger, RunRow
from agent.sources.spool import SpoolMessage, SpoolReader

log = logging.getLogger(__name__)

# The runs table key of the uid that writes for a run through the spool.
OWNER_KEY = "client.uid"
# How often the bindings of ended processes are dropped (and their attach files deleted).
FORGET_EVERY_NS = 60 * 10**9


@dataclass(slots=True)
class Pending:
    """What one checkpoint adds from the spool, and the files to delete once it is in."""

    statements: list[LedgerRecord] = field(default_factory=list)
    consumed_ids: list[str] = field(default_factory=list)
    messages: list[SpoolMessage] = field(default_factory=list)
    runs: set[str] = field(default_factory=set)  # runs whose row the ledger must update


def _own_pid_namespace() -> int | None:
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return None


def _namespaced_pids(proc: Path) -> set[tuple[int, int]]:
    """(PID-namespace inode, PID inside it) of every process on the node."""
    out: set[tuple[int, int]] = set()
    try:
        entries = [e for e in os.listdir(proc) if e.isdigit()]
    except OSError:
        return out
    for entry in entries:
        try:
            inode = os.stat(proc / entry / "ns" / "pid").st_ino
            status = (proc / entry / "status").read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("NSpid:"):
                parts = line.split()
                if len(parts) > 1 and parts[-1].isdigit():
                    out.add((inode, int(parts[-1])))
                break
    return out


class SpoolIntake:
    """Reads the spool into the ledger's checkpoints and the attributor's bindings.

    Args:
        reader: the spool directory.
        node: this node's name, for the statements.
        progress_every_s: at most one ``progress`` statement per run this often (and one
            when a rank reports its last count, and at the final checkpoint).
        attributor: told which process belongs to which run, and what each declared.
        proc: where processes are looked up, to drop the bindings of ended ones.
    """

    def __init__(self, reader: SpoolReader, node: str, progress_every_s: float,
                 attributor: Attributor | None = None, proc: Path = Path("/proc")) -> None:
        self.reader = reader
        self.state = DeclaredState()
        self.node = node
        self.progress_every_s = progress_every_s
        self.attributor = attributor
        self._proc = proc
        self._own_ns = _own_pid_namespace()
        self._held = Pending()  # a failed checkpoint's share, tried again
        self._owner: dict[str, int] = {}  # run -> the uid that first wrote for it
        self._last_forget_ns = time.monotonic_ns()

    def restore(self, rows: Mapping[str, RunRow]) -> None:
        """What the ledger's runs table kept of declared runs and their progress."""
        self.state.restore({name: {**row.meta, "model": row.model, "category": row.category}
                            for name, row in rows.items()})
        for name, row in rows.items():
            uid = row.meta.get(OWNER_KEY)
            if isinstance(uid, int) and not isinstance(uid, bool):
                self._owner[name] = uid
        if self.attributor is not None:
            for run in self.state.runs.values():
                self.attributor.declare(run)

    def collect(self, ledger: Ledger, now_ns: int, final: bool,
                base_meta: Callable[[str], RunMeta | None]) -> Pending:
        """The spool's share of this checkpoint: the statements to append with it."""
        messages = [m for m in self.reader.poll() if self._may_speak(m)]
        recorded = ledger.consumed(m.id for m in messages) if messages else set()
        accepted = self.state.accept(messages, self.node, now_ns, base_meta,
                                     recorded_ids=recorded)
        if self.attributor is not None:
            for m in messages:
                if m.kind in ("attach", "declare", "progress") and m.run:
                    self.attributor.bind(m.pid, m.pid_ns, m.run)
            for m in messages:
                declared = self.state.runs.get(m.run) if m.kind == "declare" else None
                if declared is not None:
                    self.attributor.declare(declared)
        progress, covered = self.state.progress_records(now_ns, self.node,
                                                         self.progress_every_s, final)
        held, self._held = self._held, Pending()
        return Pending(
            statements=[*held.statements, *accepted.statements, *progress],
            consumed_ids=[*held.consumed_ids, *accepted.statement_ids],
            messages=[*held.messages, *accepted.messages_recorded, *covered],
            runs=held.runs | {r.run for r in [*accepted.statements, *progress] if r.run},
        )

    def _may_speak(self, m: SpoolMessage) -> bool:
        """Whether the writer may speak for the run it names: the first user to write
        for a run owns it; root may write for any run. Anyone may drop a file into the
        spool, so without this one user could re-declare another's run (its category
        decides which regulatory scopes its compute counts in)."""
        if not m.run or m.uid is None or m.uid == 0:
            return True
        owner = self._owner.setdefault(m.run, m.uid)
        if owner == m.uid:
            return True
        self.reader.refuse(m, f"names run '{printable(m.run)}', which user {owner} writes "
                              f"for; user {m.uid} may not speak for it")
        return False

    def committed(self, pending: Pending) -> None:
        """The checkpoint holding ``pending`` is durable: delete the files it covers."""
        self.reader.consumed(pending.messages)
        now = time.monotonic_ns()
        if now - self._last_forget_ns >= FORGET_EVERY_NS:
            self._last_forget_ns = now
            self.reader.consumed(self.state.forget_exited(self._alive_check()))

    def failed(self, pending: Pending) -> None:
        """The checkpoint failed: keep ``pending`` for the next one."""
        self._held = pending

    def run_meta(self, run: str) -> dict[str, object]:
        """The keys a run's row in the ledger carries for its progress (restored at start)."""
        progress = self.state.progress.get(run)
        out: dict[str, object] = progress.to_meta() if progress is not None else {}
        if run in self._owner:
            out[OWNER_KEY] = self._owner[run]
        return out

    def row(self, run: str) -> RunRow | None:
        """The ledger row of a run known only from the spool (no compute yet)."""
        meta = self.state.runs.get(run)
        if meta is None and run not in self.state.progress:
            return None
        out: dict[str, object] = {"via": "client"} if meta is not None else {}
        if meta is not None:
            out.update({"recompute": meta.recompute, "recompute_factor": meta.recompute_factor})
            if meta.precision:
                out["precision"] = meta.precision
            if meta.base_models:
                out["base_models"] = list(meta.base_models)
            out.update({f"plan.{k}": v for k, v in meta.plan.items()})
        out.update(self.run_meta(run))
        return RunRow(run, meta.model if meta else "", meta.category if meta else "unknown",
                      out)

    def snapshot(self) -> tuple[DeclaredRunSnapshot, ...]:
        return self.state.snapshot()

    def _alive_check(self) -> Callable[[int, int | None], bool]:
        foreign: set[tuple[int, int]] | None = None

        def alive(pid: int, pid_ns: int | None) -> bool:
            nonlocal foreign
            if pid_ns is None or pid_ns == self._own_ns:
                return (self._proc / str(pid)).exists()
            if foreign is None:
                foreign = _namespaced_pids(self._proc)
            return (pid_ns, pid) in foreign

        return alive
