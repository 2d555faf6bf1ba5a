"""What trainers declared through the client spool: their runs' metadata, their progress,
and the statements that put both (and attestations and gate decisions) in the ledger.

A ``declare`` message overrides what the environment or Slurm said about the run; a
``progress`` message reports cumulative counts, merged by maximum so that re-reading a
message, or reading an older one after a newer one, changes nothing. The run's processed
tokens are the larger of the sum over ranks (scope ``rank``) and the largest count any
trainer reported for the whole run (scope ``run``).

Nothing here deletes a spool file: :class:`DeclaredState` says which messages' content is
in which drafts, and the caller deletes their files only after the drafts are committed.
A failed commit keeps the drafts and their messages for the next attempt.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from agent.accounting.names import printable, run_id_problem
from agent.accounting.records import LedgerRecord, make_statement
from agent.accounting.runmeta import meta_fields
from agent.accounting.runs import (
    CATEGORIES,
    RECOMPUTE_FACTORS,
    RECOMPUTE_MODES,
    UNATTRIBUTED,
    RunMeta,
)
from agent.accounting.snapshot import DeclaredRunSnapshot
from agent.sources.specs import MATMUL_PRECISIONS
from agent.sources.spool import SpoolMessage

VIA = "client"
_META_KEYS = ("model", "base_models", "category", "precision", "recompute",
              "recompute_factor")
_RECOMPUTE_FIELDS = ("recompute", "recompute_factor", "recompute_declared")
PROGRESS_PREFIX = "progress."
# Ids of recorded declarations, attestations and gate decisions, so a file read again
# (after a restart between the commit and the deletion) is not recorded twice.
_MAX_RECORDED_IDS = 100_000
_FORMULA = "6 x P x D"
_FORMULA_ATTENTION = "6 x P x D + 12 x layers x d_model x context x D"

PidKey = tuple[int, int | None]


def declaration_meta(msg: SpoolMessage, base: RunMeta | None) -> tuple[RunMeta, list[str]]:
    """The run a ``declare`` message describes: ``base`` (what the environment or Slurm
    said about it, if anything) overridden by every field the trainer declared.

    Returns:
        the run (``via`` ``client``), and one warning line per declared value that was
        ignored. A run id no run may claim gives :data:`UNATTRIBUTED` and one warning.
    """
    problem = run_id_problem(msg.run)
    if problem is not None:
        return UNATTRIBUTED, [f"run id '{printable(msg.run)}' {problem}: it claims nothing"]
    declaration: Mapping[str, Any] = msg.body.get("declaration", {})
    label = f"{msg.path.name}: declaration"
    warnings: list[str] = []

    def complain(where: str, value: object, expected: str) -> None:
        given = " missing" if value is None else f"={printable(repr(value))}"
        warnings.append(f"{printable(where)}{given}: expected {expected}; ignored")

    values = {k: (declaration[k], f"{label}.{k}") for k in _META_KEYS if k in declaration}
    plan_doc: Mapping[str, Any] = declaration.get("plan", {})
    plan = {k: (v, f"{label}.plan.{k}") for k, v in plan_doc.items()}
    fields_ = meta_fields(values, plan, lambda k: f"{label}.{k}", complain)
    if "recompute" not in declaration and "recompute_factor" not in declaration:
        # meta_fields answers "none" for an undeclared mode; the base may know better.
        for key in _RECOMPUTE_FIELDS:
            fields_.pop(key, None)
    start = base if base is not None and base.run_id != UNATTRIBUTED.run_id else RunMeta(msg.run)
    fields_["plan"] = {**start.plan, **fields_.get("plan", {})}
    return replace(start, run_id=msg.run, via=VIA, **fields_), warnings


def declared_flop(plan: Mapping[str, float | str], tokens: float) -> tuple[float, str] | None:
    """The training compute a declared architecture implies for ``tokens`` processed:
    6 x params per token, plus 12 x layers x d_model x context per token (attention)
    when all three are declared; the same formula as
    ``agent.compliance.planner.ArchitecturePlan``.

    Returns:
        (FLOP, the formula used), or None without a declared parameter count.
    """
    params = _plan_number(plan, "params")
    if params is None:
        return None
    flop = 6 * params * tokens
    attention = [_plan_number(plan, k) for k in ("layers", "d_model", "context")]
    if all(v is not None for v in attention):
        layers, d_model, context = (float(v or 0) for v in attention)
        return flop + 12 * layers * d_model * context * tokens, _FORMULA_ATTENTION
    return flop, _FORMULA


def _plan_number(plan: Mapping[str, object], key: str) -> float | None:
    value = plan.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) and value >= 0 else None


def _count(value: object) -> int | None:
    """A non-negative integer from a stored value (JSON may give an integral float)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)
    return value if isinstance(value, int) and value >= 0 else None


@dataclass
class RunProgress:
    """A run's reported progress, merged by maximum.

    Attributes:
        run: the run id.
        ranks: rank -> (tokens, steps, time_ns): the largest of each any scope ``rank``
            message of that rank reported.
        run_tokens: the largest scope ``run`` token count.
        steps: the largest step count of any message.
        updated_ns: the writers' latest ``time_ns``.
        final_ranks: ranks that sent their last report.
    """

    run: str
    ranks: dict[int, tuple[int, int, int]] = field(default_factory=dict)
    run_tokens: int = 0
    steps: int = 0
    updated_ns: int = 0
    final_ranks: set[int] = field(default_factory=set)

    @property
    def tokens(self) -> int:
        """The run's processed tokens: the sum over ranks or the largest run-scope
        count, whichever is larger."""
        return max(sum(t for t, _, _ in self.ranks.values()), self.run_tokens)

    def merge(self, msg: SpoolMessage) -> bool:
        """Take in one ``progress`` message of this run.

        Returns:
            True if a count grew or a rank reported its end for the first time.

        Raises:
            ValueError: for a message of another kind or run.
        """
        if msg.kind != "progress" or msg.run != self.run:
            raise ValueError(f"{msg.path.name}: a {msg.kind} message of run "
                             f"'{printable(msg.run)}' merged into run '{printable(self.run)}'")
        tokens, steps = int(msg.body["tokens"]), int(msg.body["steps"])
        if msg.body["scope"] == "rank":
            old = self.ranks.get(msg.rank)
            was = old or (0, 0, 0)
            self.ranks[msg.rank] = (max(was[0], tokens), max(was[1], steps),
                                    max(was[2], msg.time_ns))
            grew = old is None or self.ranks[msg.rank][:2] != old[:2]
        else:
            grew = tokens > self.run_tokens
            self.run_tokens = max(self.run_tokens, tokens)
        grew = grew or steps > self.steps
        self.steps = max(self.steps, steps)
        self.updated_ns = max(self.updated_ns, msg.time_ns)
        if msg.body["final"] and msg.rank not in self.final_ranks:
            self.final_ranks.add(msg.rank)
            grew = True
        return grew

    def to_meta(self) -> dict[str, object]:
        """The progress as run metadata (the ledger's runs table keeps it across a
        restart); :meth:`from_meta` reads it back."""
        return {
            "progress.tokens": self.tokens,
            "progress.steps": self.steps,
            "progress.run_tokens": self.run_tokens,
            "progress.ranks": {str(r): list(v) for r, v in sorted(self.ranks.items())},
            "progress.updated_ns": self.updated_ns,
            "progress.final_ranks": sorted(self.final_ranks),
        }

    @classmethod
    def from_meta(cls, run: str, meta: Mapping[str, object]) -> RunProgress:
        """The progress stored by :meth:`to_meta`; values that do not read as counts
        are ignored (the stored metadata may come from an older or damaged ledger)."""
        ranks: dict[int, tuple[int, int, int]] = {}
        stored = meta.get("progress.ranks")
        if isinstance(stored, Mapping):
            for key, value in stored.items():
                rank = _count(int(key)) if isinstance(key, str) and key.isdigit() else None
                counts = ([_count(v) for v in value]
                          if isinstance(value, list) and len(value) == 3 else [None])
                if rank is not None and all(c is not None for c in counts):
                    t, s, ns = (int(c or 0) for c in counts)
                    ranks[rank] = (t, s, ns)
        finals = meta.get("progress.final_ranks")
        progress = cls(
            run, ranks,
            run_tokens=_count(meta.get("progress.run_tokens")) or 0,
            steps=_count(meta.get("progress.steps")) or 0,
            updated_ns=_count(meta.get("progress.updated_ns")) or 0,
            final_ranks={r for r in (_count(v) for v in finals) if r is not None}
            if isinstance(finals, list) else set())
        if not ranks:
            # Without the per-rank counts the total still bounds the run from below.
            progress.run_tokens = max(progress.run_tokens,
                                      _count(meta.get("progress.tokens")) or 0)
        return progress


@dataclass
class Accepted:
    """What :meth:`DeclaredState.accept` made of a batch of messages.

    Attributes:
        statements: drafts to append: one ``declaration`` per ``declare``, one
            ``attestation`` or ``gate`` per such message.
        progress_changed: runs whose progress grew.
        messages_recorded: messages whose content is in ``statements`` or already
            committed: delete their files once ``statements`` are committed.
        messages_pending: ``progress`` messages whose content waits for the run's next
            progress record (:meth:`DeclaredState.progress_records` hands them back).
        statement_ids: the ids of the messages ``statements`` were made from (the
            ledger records them as consumed with the statements).
        messages_held: ``attach`` messages: their files stay while the process lives, so
            a restarted agent learns the binding again
            (:meth:`DeclaredState.forget_exited` hands them back).
    """

    statements: list[LedgerRecord] = field(default_factory=list)
    statement_ids: list[str] = field(default_factory=list)
    progress_changed: set[str] = field(default_factory=set)
    messages_recorded: list[SpoolMessage] = field(default_factory=list)
    messages_pending: list[SpoolMessage] = field(default_factory=list)
    messages_held: list[SpoolMessage] = field(default_factory=list)


def _provenance(msg: SpoolMessage) -> dict[str, object]:
    return {"message_id": msg.id, "time_ns": msg.time_ns, "pid": msg.pid,
            "pid_ns": msg.pid_ns, "rank": msg.rank, "world_size": msg.world_size,
            "host": msg.host, "uid": msg.uid, "spool_file": msg.path.name}


class DeclaredState:
    """The node's view of what its trainers declared.

    Attributes:
        runs: run id -> the declared run (:func:`declaration_meta`).
        progress: run id -> its merged progress.
        pids: (pid, PID-namespace inode) -> run id, from ``attach``, ``declare`` and
            ``progress`` messages; the pid is as the writer's own namespace sees it.
    """

    def __init__(self) -> None:
        self.runs: dict[str, RunMeta] = {}
        self.progress: dict[str, RunProgress] = {}
        self.pids: dict[PidKey, str] = {}
        self._base: dict[str, RunMeta] = {}  # what the environment said, for progress-only runs
        self._recorded_ids: dict[str, None] = {}  # insertion-ordered, oldest dropped first
        self._unrecorded: dict[str, list[SpoolMessage]] = {}  # run -> pending progress
        self._final_due: set[str] = set()
        self._last_record_ns: dict[str, int] = {}
        self._seen_ns: dict[str, int] = {}
        self._attached: dict[PidKey, list[SpoolMessage]] = {}

    def _remember_id(self, message_id: str) -> None:
        self._recorded_ids[message_id] = None
        while len(self._recorded_ids) > _MAX_RECORDED_IDS:
            del self._recorded_ids[next(iter(self._recorded_ids))]

    def _bind(self, msg: SpoolMessage, out: Accepted) -> None:
        key = (msg.pid, msg.pid_ns)
        if self.pids.get(key) not in (None, msg.run):
            # The pid was reused by another run: the old binding's files are stale.
            out.messages_recorded.extend(self._attached.pop(key, []))
        self.pids[key] = msg.run

    def _meta_of(self, run: str) -> RunMeta | None:
        return self.runs.get(run) or self._base.get(run)

    def accept(self, messages: Iterable[SpoolMessage], node: str, now_ns: int,
               base_meta: Callable[[str], RunMeta | None],
               recorded_ids: Collection[str] = ()) -> Accepted:
        """Take in messages (as :meth:`SpoolReader.poll` returns them).

        Args:
            node: this node's name, for the drafts.
            now_ns: the agent's wall clock: the drafts' instant (the writer's clock is
                in the payload as ``time_ns``).
            base_meta: what the environment or Slurm says about a run, if anything.
            recorded_ids: ids among these messages' that the ledger already records as
                consumed (a stop came between the commit and the deletion): their files
                are deleted, nothing is recorded again.
        """
        for message_id in recorded_ids:
            self._remember_id(message_id)
        out = Accepted()
        for msg in messages:
            if msg.kind in ("attach", "declare", "progress"):
                self._bind(msg, out)
                self._seen_ns[msg.run] = now_ns
            if msg.kind == "attach":
                self._attached.setdefault((msg.pid, msg.pid_ns), []).append(msg)
                out.messages_held.append(msg)
            elif msg.kind == "progress":
                self._accept_progress(msg, base_meta, out)
            elif msg.id in self._recorded_ids:
                out.messages_recorded.append(msg)
            else:
                out.statements.append(self._statement(msg, node, now_ns, base_meta))
                out.statement_ids.append(msg.id)
                self._remember_id(msg.id)
                out.messages_recorded.append(msg)
        return out

    def _accept_progress(self, msg: SpoolMessage, base_meta: Callable[[str], RunMeta | None],
                         out: Accepted) -> None:
        if msg.run not in self.runs and msg.run not in self._base:
            base = base_meta(msg.run)
            if base is not None:
                self._base[msg.run] = base
        progress = self.progress.setdefault(msg.run, RunProgress(msg.run))
        finals = len(progress.final_ranks)
        if progress.merge(msg):
            out.progress_changed.add(msg.run)
            self._unrecorded.setdefault(msg.run, []).append(msg)
            out.messages_pending.append(msg)
            if len(progress.final_ranks) > finals:
                self._final_due.add(msg.run)
        else:
            # Dominated by the merged state, whose growth is recorded or pending.
            out.messages_recorded.append(msg)

    def _statement(self, msg: SpoolMessage, node: str, now_ns: int,
                   base_meta: Callable[[str], RunMeta | None]) -> LedgerRecord:
        if msg.kind == "declare":
            meta, warnings = declaration_meta(msg, self.runs.get(msg.run) or base_meta(msg.run))
            if meta.run_id == msg.run:
                self.runs[msg.run] = meta
            payload = {"declaration": msg.body["declaration"], **_provenance(msg),
                       "warnings": warnings}
            return make_statement("declaration", node=node, time_ns=now_ns, run=msg.run,
                                  model=meta.model, category=meta.category, payload=payload)
        if msg.kind == "attestation":
            return make_statement("attestation", node=node, time_ns=now_ns,
                                  model=msg.body["model"],
                                  payload={**msg.body, **_provenance(msg)})
        decision: dict[str, Any] = msg.body["decision"]
        return make_statement("gate", node=node, time_ns=now_ns, model=msg.body["model"],
                              payload={**decision, **_provenance(msg)})

    def progress_records(self, now_ns: int, node: str, every_s: float,
                         final: bool) -> tuple[list[LedgerRecord], list[SpoolMessage]]:
        """One ``progress`` draft per run whose progress grew since its last one, when
        ``every_s`` has passed since that record, a rank sent its last report, the run
        has none yet, or ``final`` (the agent stops).

        Returns:
            the drafts, and the pending messages whose content they hold: delete those
            files once the drafts are committed.
        """
        drafts: list[LedgerRecord] = []
        covered: list[SpoolMessage] = []
        for run in sorted(self._unrecorded):
            last = self._last_record_ns.get(run)
            if not (final or run in self._final_due or last is None
                    or now_ns - last >= every_s * 1e9):
                continue
            messages = self._unrecorded.pop(run)
            self._final_due.discard(run)
            self._last_record_ns[run] = now_ns
            meta = self._meta_of(run)
            payload = {**self.progress[run].to_meta(),
                       "message_ids": [m.id for m in messages]}
            drafts.append(make_statement(
                "progress", node=node, time_ns=now_ns, run=run,
                model=meta.model if meta else "", category=meta.category if meta else "",
                payload=payload))
            covered.extend(messages)
        return drafts, covered

    def forget_exited(self, alive: Callable[[int, int | None], bool]) -> list[SpoolMessage]:
        """Drop the bindings of processes that ended (``alive(pid, pid_ns)`` False), so
        a reused pid is never charged to an old run.

        Returns:
            their ``attach`` messages: delete those files.
        """
        done: list[SpoolMessage] = []
        for key in [k for k in self.pids if not alive(*k)]:
            del self.pids[key]
            done.extend(self._attached.pop(key, []))
        return done

    def snapshot(self) -> tuple[DeclaredRunSnapshot, ...]:
        """Every run that declared itself or reported progress, by run id."""
        out = []
        for run in sorted(set(self.runs) | set(self.progress)):
            meta = self._meta_of(run)
            plan = meta.plan if meta else {}
            progress = self.progress.get(run) or RunProgress(run)
            # No token counted yet (a trainer that reports steps only) is unknown
            # compute, not zero: no declared figure to hold against the measured one.
            flop = declared_flop(plan, progress.tokens) if progress.tokens > 0 else None
            seen_ns = self._seen_ns.get(run, progress.updated_ns)
            out.append(DeclaredRunSnapshot(
                run_id=run, model=meta.model if meta else "", tokens=progress.tokens,
                steps=progress.steps, planned_tokens=_plan_number(plan, "tokens"),
                params=_plan_number(plan, "params"),
                declared_flop=flop[0] if flop else None, formula=flop[1] if flop else "",
                updated_wall_seconds=seen_ns / 1e9))
        return tuple(out)

    def restore(self, runs_meta: Mapping[str, Mapping[str, object]],
                recorded_ids: Iterable[str] = ()) -> None:
        """Take back what the ledger kept, at start.

        Args:
            runs_meta: run id -> its row of the ledger's runs table: the row's metadata
                with its ``model`` and ``category`` columns added as keys. Runs declared
                through the spool (``via`` ``client``) come back as declared runs;
                ``progress.*`` keys come back as progress.
            recorded_ids: the ``message_id`` of every declaration, attestation and gate
                statement in the ledger, so a file left behind by a stop between the
                commit and the deletion is not recorded twice.
        """
        for run, meta in runs_meta.items():
            if any(k.startswith(PROGRESS_PREFIX) for k in meta):
                self.progress[run] = RunProgress.from_meta(run, meta)
            if meta.get("via") == VIA and run_id_problem(run) is None:
                self.runs[run] = _meta_from_row(run, meta)
        for message_id in recorded_ids:
            self._remember_id(message_id)


def _meta_from_row(run: str, meta: Mapping[str, object]) -> RunMeta:
    """A declared run from its stored row; values that do not fit are left at their
    defaults."""
    model = meta.get("model")
    category = meta.get("category")
    precision = meta.get("precision")
    recompute = meta.get("recompute")
    mode = recompute if isinstance(recompute, str) and recompute in RECOMPUTE_MODES else "none"
    factor = RECOMPUTE_FACTORS.get(mode)
    stored_factor = meta.get("recompute_factor")
    if factor is None:
        factor = (float(stored_factor) if isinstance(stored_factor, int | float)
                  and not isinstance(stored_factor, bool) and math.isfinite(stored_factor)
                  and stored_factor >= 1 else 1.0)
    declared = meta.get("recompute_declared")
    bases = meta.get("base_models")
    plan: dict[str, float | str] = {}
    for key, value in meta.items():
        if key.startswith("plan.") and len(key) > 5:
            if isinstance(value, int | float) and not isinstance(value, bool) \
                    and math.isfinite(value):
                plan[key[5:]] = float(value)
            elif isinstance(value, str):
                plan[key[5:]] = value
    return RunMeta(
        run_id=run, via=VIA,
        model=model if isinstance(model, str) else "",
        category=category if isinstance(category, str) and category in CATEGORIES
        else "unknown",
        precision=precision if isinstance(precision, str) and precision in MATMUL_PRECISIONS
        else None,
        recompute=mode, recompute_factor=factor,
        recompute_declared=declared if isinstance(declared, bool) else mode != "none",
        plan=plan,
        base_models=tuple(b for b in bases if isinstance(b, str))
        if isinstance(bases, list) else ())
