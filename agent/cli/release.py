"""``flopledger attest`` and ``flopledger gate``: evaluations attested, and the release
gate that holds a model's compute and attestations to a release policy.

Both write a signed statement into the ledger. While the agent runs it holds the
ledger (``<state_dir>/agent.lock``, one writer), so the statement goes into the agent's
client spool (docs/client-spool.md) and the agent records it at its next checkpoint; the
command then waits up to ``--wait`` seconds, reading the ledger, for the record. When no
agent holds the lock, the command opens the ledger itself, appends the statement under a
new signed head and closes it again.

``gate --ledger postgresql://...`` decides on the cluster store: verified first, the
model's compute summed over every node, its attestations from every node's statements.
The decision is written nowhere: the store holds the nodes' own records, and a gate
decision belongs to a node's ledger (as with ``--bundle``, it is printed only).

Exit codes (see docs/release-gate.md): ``attest`` 0 recorded or queued, 1 the ledger
fails verification (or the agent rejected the message), 2 a bad argument or
configuration. ``gate`` 0 allowed, 3 the mode is not allowed, 4 evaluations missing or
failed (or the compute is of unknown amount), 1 the evidence fails verification or the
decision could not be recorded, 2 a bad argument, configuration or policy.
"""

from __future__ import annotations

import argparse
import getpass
import json
import math
import os
import secrets
import shlex
import socket
import sys
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.accounting.names import name_problem, printable, run_id_problem
from agent.cli.common import (
    LazyChoices,
    add_ledger_args,
    cluster_url,
    config_of,
    ledger_path,
    open_cluster,
)
from agent.configfile import bundled_config

if TYPE_CHECKING:
    from agent.accounting.records import LedgerRecord
    from agent.compliance.attestations import Attested
    from agent.compliance.gate import FamilyCounts, ModelFigures
    from agent.compliance.thresholds import Registry
    from agent.config import Config
    from agent.ledger.pg_query import ClusterView

SPOOL_FORMAT = "flopledger-spool-1"
MAX_MESSAGE_BYTES = 65536
DEFAULT_WAIT_S = 15.0
MAX_WAIT_S = 3600.0
POLL_S = 0.2
EXIT_USAGE = 2
EXIT_FAILED = 1
# Why ``gate --ledger postgresql://...`` writes its decision nowhere.
CLUSTER_NOT_RECORDED = ("the cluster store holds the nodes' own records, and a gate "
                        "decision belongs to a node's ledger (run the gate with --ledger on "
                        "a node's ledger to record one there)")


class UsageError(Exception):
    """A bad argument: one line, exit 2."""


@dataclass(frozen=True, slots=True)
class Recorded:
    """Where a statement went: ``recorded`` (as record ``seq``), ``queued`` (``file``
    in the spool, not yet recorded), or ``not-recorded`` (``reason``)."""

    status: str
    seq: int | None = None
    file: str = ""
    reason: str = ""
    message_id: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"status": self.status, "record": self.seq, "file": self.file,
                "reason": self.reason, "message_id": self.message_id}


def _name(what: str, value: str, *, reserved: bool = True) -> str:
    # As the agent's spool reader holds them: a model or an evaluation may not take the
    # id reserved for unclaimed compute; a person's name may.
    problem = run_id_problem(value) if reserved else name_problem(value)
    if problem is not None:
        raise UsageError(f"{what} {printable(value)!r} {problem}")
    return value


def _wait_s(value: float) -> float:
    if not math.isfinite(value) or not 0 <= value <= MAX_WAIT_S:
        raise UsageError(f"--wait {value}: expected a number of seconds >= 0 and <= "
                         f"{MAX_WAIT_S:.0f}")
    return value


def _login_user() -> str:
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no login name in the environment nor in passwd
        return f"uid {os.getuid()}"


# ---------------------------------------------------------------------------------------
# The ledger, directly or through the agent's spool.


def _state_dir(args: argparse.Namespace, config: Config, path: Path) -> Path:
    return path.parent if getattr(args, "ledger", None) else config.agent.state_dir


def _verified_for_writing(path: Path) -> str:
    """The ledger's node, once its consistency checks pass.

    Raises:
        LedgerNotFoundError: if there is no ledger at ``path``.
        LedgerDamagedError: if it fails its checks.
    """
    from agent.ledger.integrity import check_ledger
    from agent.ledger.query import LedgerNotFoundError
    from agent.ledger.store import LedgerDamagedError

    if not path.is_file():
        raise LedgerNotFoundError(f"no ledger at {path} (has the agent run with this "
                                  "state_dir?)")
    check = check_ledger(path)
    if not check.ok:
        raise LedgerDamagedError(check)
    return check.node


def _append_directly(path: Path, state_dir: Path, node: str, kind: str, model: str,
                     payload: Mapping[str, Any], message_id: str) -> int | None:
    """Append one statement under a new signed head, holding the state directory's lock
    meanwhile; the record number, or None if an agent holds the lock.

    Raises:
        LedgerRefusedError: the ledger fails its checks, or its node key is missing.
        LedgerError, sqlite3.Error, OSError: it could not be written.
    """
    from agent.accounting.records import make_statement
    from agent.ledger import lock as state_lock
    from agent.ledger.integrity import check_ledger
    from agent.ledger.signing import load_or_create_key
    from agent.ledger.store import Ledger, LedgerDamagedError, LedgerRefusedError

    try:
        held = state_lock.acquire(state_dir)
    except state_lock.StateLockedError:
        return None
    try:
        # Checked again under the lock: what was checked before may have changed.
        check = check_ledger(path)
        if not check.ok:
            raise LedgerDamagedError(check)
        key_path = state_dir / "node.key"
        if not key_path.is_file():
            raise LedgerRefusedError(f"{path}: its node key {key_path} is missing; the "
                                     "statement could not be signed")
        ledger = Ledger(path, node, load_or_create_key(key_path), check=check)
        try:
            now = time.time_ns()
            statement = make_statement(kind, node=node, time_ns=now, model=model,
                                       payload=payload)
            head = ledger.append([statement], now, consumed_ids=[message_id])
        finally:
            ledger.close()
    finally:
        # A command that only passes through leaves the lock file as it found it.
        held.release(undo=True)
    return head.size - 1 if head is not None else None


def _pid_namespace() -> int | None:
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return None


def spool_message(kind: str, message_id: str, time_ns: int,
                  body: Mapping[str, Any]) -> dict[str, Any]:
    """A ``flopledger-spool-1`` message of ``kind`` (``attestation`` or ``gate``)."""
    return {"format": SPOOL_FORMAT, "kind": kind, "id": message_id, "time_ns": time_ns,
            "pid": os.getpid(), "pid_ns": _pid_namespace(), "host": socket.gethostname(),
            **body}


def write_spool(spool: Path, message: Mapping[str, Any]) -> Path:
    """Write ``message`` into the spool as ``<kind>-<time_ns>-<pid>-<hex>.json``:
    ``.<name>.tmp`` first, fsync'd, then renamed (the agent never reads half a file).

    Raises:
        UsageError: for a message over the spool's size limit.
        OSError: if the spool cannot be written (no file is left behind).
    """
    data = (json.dumps(message, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
            + "\n").encode("utf-8")
    if len(data) > MAX_MESSAGE_BYTES:
        raise UsageError(f"the {message['kind']} message would take {len(data)} bytes, over "
                         f"the spool's limit of {MAX_MESSAGE_BYTES}")
    name = f"{message['kind']}-{message['time_ns']}-{message['pid']}-{secrets.token_hex(4)}.json"
    final, temporary = spool / name, spool / f".{name}.tmp"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o644)
    try:
        try:
            os.fchmod(fd, 0o644)  # readable by the agent whatever the umask
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(temporary, final)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return final


def _wait_for_record(path: Path, kind: str, model: str, message_id: str, spooled: Path,
                     wait_s: float) -> tuple[int | None, bool]:
    """(the record number of the statement carrying ``message_id`` once the agent has
    recorded it, or None after ``wait_s``; whether the agent rejected the message)."""
    from agent.compliance.attestations import message_id_of
    from agent.ledger.query import LedgerReadError, statements

    deadline = time.monotonic() + wait_s
    rejected = spooled.with_name(spooled.name + ".rejected")
    while True:
        try:
            for r in statements(path, kinds=(kind,), model=model):
                if message_id_of(r.assumptions) == message_id:
                    return r.seq, False
        except (LedgerReadError, FileNotFoundError):
            pass  # a moment the file cannot be read; the next poll reads it again
        if rejected.exists():
            return None, True
        if time.monotonic() >= deadline:
            return None, False
        time.sleep(min(POLL_S, max(0.0, deadline - time.monotonic())))


def record_statement(args: argparse.Namespace, config: Config, path: Path, kind: str,
                     model: str, payload: dict[str, Any], spool_body: dict[str, Any],
                     message_id: str, time_ns: int) -> Recorded:
    """The statement appended directly, or queued for the running agent.

    Raises:
        UsageError: the agent holds the ledger but reads no spool, or its spool is
            missing.
        LedgerRefusedError, LedgerError, OSError, sqlite3.Error: it could not be written.
    """
    state_dir = _state_dir(args, config, path)
    node = _verified_for_writing(path)
    seq = _append_directly(path, state_dir, node, kind, model, payload, message_id)
    if seq is not None:
        return Recorded("recorded", seq, message_id=message_id)
    spool = config.client.spool_dir
    if spool is None:
        raise UsageError(f"an agent holds {state_dir} and reads no spool ([client] spool_dir "
                         f"is empty in {config.path or 'the config'}): set it, or stop the "
                         "agent, to record this")
    if not spool.is_dir():
        raise UsageError(f"an agent holds {state_dir}, but its spool directory {spool} does "
                         "not exist: give the agent's config with --config ([client] "
                         "spool_dir)")
    spooled = write_spool(spool, spool_message(kind, message_id, time_ns, spool_body))
    seq, rejected = _wait_for_record(path, kind, model, message_id, spooled, args.wait)
    if rejected:
        return Recorded("rejected", file=str(spooled), message_id=message_id,
                        reason=f"the agent rejected the message (kept as {spooled.name}"
                               ".rejected; its log says why)")
    if seq is not None:
        return Recorded("recorded", seq, file=str(spooled), message_id=message_id)
    return Recorded("queued", file=str(spooled), message_id=message_id)


def recorded_line(what: str, r: Recorded, path: Path | str, wait_s: float) -> str:
    if r.status == "recorded":
        via = " by the running agent" if r.file else ""
        return f"recorded {what} as record {r.seq} of the ledger {printable(str(path), 400)}{via}"
    if r.status == "queued":
        return (f"queued {what} in the spool for the running agent "
                f"({printable(r.file, 400)}); still queued after {wait_s:g} s: the agent "
                "records it at its next checkpoint")
    return f"{what} was not recorded: {r.reason}"


# ---------------------------------------------------------------------------------------
# attest


def cmd_attest(args: argparse.Namespace) -> int:
    """0 recorded or queued; 1 the ledger fails verification or the agent rejected the
    message; 2 a bad argument or configuration."""
    from agent.compliance.attestations import (
        attestation_payload,
        evidence_problem,
        parse_result,
    )

    try:
        model = _name("model", args.model)
        evaluation = _name("--evaluation", args.evaluation)
        result, score = parse_result(args.result)
        problem = evidence_problem(args.evidence)
        if problem is not None:
            raise UsageError(f"--evidence {printable(args.evidence, 400)!r} {problem}")
        by = _name("--by", args.by if args.by is not None else _login_user(), reserved=False)
        wait_s = _wait_s(args.wait)
    except (UsageError, ValueError) as e:
        print(f"flopledger: {e}", file=sys.stderr)
        return EXIT_USAGE
    config = config_of(args)
    path = ledger_path(args, config)
    time_ns = time.time_ns()
    message_id = uuid.uuid4().hex
    payload = attestation_payload(evaluation=evaluation, result=result, score=score,
                                  evidence=args.evidence, by=by, time_ns=time_ns,
                                  message_id=message_id)
    body = {"model": model, "evaluation": evaluation, "result": result, "score": score,
            "evidence": args.evidence, "by": by}
    try:
        recorded = record_statement(args, config, path, "attestation", model, payload, body,
                                    message_id, time_ns)
    except UsageError as e:
        print(f"flopledger: {e}", file=sys.stderr)
        return EXIT_USAGE
    what = (f"attestation of {printable(model)}: {printable(evaluation)} "
            f"{'score ' + format(score, 'g') if score is not None else result}")
    line = recorded_line(what, recorded, path, wait_s)
    if recorded.status == "rejected":
        print(f"flopledger: {line}", file=sys.stderr)
        return EXIT_FAILED
    print(line)
    return 0


# ---------------------------------------------------------------------------------------
# gate


@dataclass(frozen=True, slots=True)
class Evidence:
    """What the gate read, once verified."""

    doc: dict[str, Any]  # for the decision's JSON
    line: str
    sealed: list[Any]
    unsealed: list[Any]
    run_meta: dict[str, dict[str, object]]
    statements: list[Any]
    # Read from the cluster store: the figures and attestations, already drawn from it
    # (its records are not read into memory).
    figures: ModelFigures | None = None
    attested: Attested | None = None


class EvidenceError(Exception):
    """The ledger or bundle fails verification: exit 1."""


def _ledger_evidence(path: Path, model: str, fingerprint: str | None) -> Evidence:
    from agent import figures
    from agent.ledger.query import read_view
    from agent.ledger.verify import describe_discontinuity, verify_ledger

    report = verify_ledger(path, fingerprint)
    # A ledger recovered with `flopledger recover` carries its earlier sums over: said,
    # and no failure of the ledger after it.
    recovered = {describe_discontinuity(r) for r in report.discontinuities}
    problems = [p for p in report.problems if p not in recovered]
    if problems:
        more = f" (and {len(problems) - 1} more: `flopledger verify --ledger {path}`)" \
            if len(problems) > 1 else ""
        raise EvidenceError(f"the ledger {path} fails verification: {problems[0]}{more}")
    view = read_view(path)
    head = view.head
    doc = {"kind": "ledger", "path": str(path), "key_fingerprint": view.key_fingerprint,
           "records": view.head_size,
           "signed_at_ns": head.timestamp_ns if head is not None else None,
           "root": head.root.hex() if head is not None else None,
           "discontinuities": sorted(recovered)}
    signed = (f"{view.head_size} records under the signed head of "
              f"{figures.when(head.timestamp_ns)}" if head is not None else "no signed head")
    line = (f"evidence  ledger {printable(str(path), 400)}: verified; {signed}, key "
            f"{view.key_fingerprint}")
    for text in sorted(recovered):
        line += f"\nWARNING   {printable(text, 800)}"
    statements = [s for s in view.statements if s.model == model]
    return Evidence(doc, line, view.sealed, view.unsealed, view.run_meta, statements)


def _bundle_evidence(path: Path, model: str, fingerprint: str | None) -> Evidence:
    """A node's audit bundle of ``model``, or a cluster bundle (one per node).

    Raises:
        EvidenceError: it fails verification.
        UsageError: it is of another selection, or a key is pinned for a cluster bundle.
    """
    from agent.accounting.records import LedgerRecord
    from agent.ledger.bundle import verify_bundle
    from agent.ledger.cluster_bundle import is_cluster_bundle

    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError):
        doc = None  # verify_bundle says what is wrong with it
    if is_cluster_bundle(doc):
        return _cluster_bundle_evidence(path, doc, model, fingerprint)
    report = verify_bundle(path, fingerprint)
    _verified(f"the bundle {path}", path, report.problems)
    _of_model(path, report.selection, model, "")
    # Verified above: every body is a canonical record in the signed ledger.
    doc = json.loads(path.read_text())
    records = [LedgerRecord.decode(str(e["body"]).encode()) for e in doc["records"]]
    heads = doc["tree_heads"]
    evidence = {"kind": "bundle", "path": str(path), "key_fingerprint": report.key_fingerprint,
                "records": report.records, "statements": len(report.statements),
                "head_size": heads[-1].get("size") if heads else None}
    line = (f"evidence  bundle {printable(str(path), 400)}: verified; {report.records} "
            f"records and {len(report.statements)} statements of model {printable(model)}, "
            f"key {report.key_fingerprint}")
    return Evidence(evidence, line, records, [], {}, list(report.statements))


def _verified(what: str, path: Path, problems: list[str]) -> None:
    """Raises: EvidenceError naming the first problem, if any."""
    if problems:
        more = (f" (and {len(problems) - 1} more: `flopledger verify {path}`)"
                if len(problems) > 1 else "")
        raise EvidenceError(f"{what} fails verification: {printable(problems[0], 800)}{more}")


def _of_model(path: Path, selection: Mapping[str, Any], model: str, source: str) -> None:
    """Raises: UsageError if the bundle is not of ``model``."""
    if selection.get("model") != model:
        what = ", ".join(f"{k} {v}" for k, v in selection.items())
        raise UsageError(f"the bundle {path} is of {printable(what)}, not of model "
                         f"{printable(model)}: export it with `flopledger export --model "
                         f"{printable(model)}{source}`")


def _cluster_bundle_evidence(path: Path, doc: Any, model: str, fingerprint: str | None
                             ) -> Evidence:
    """A cluster bundle of ``model`` (``flopledger export --model M --ledger
    postgresql://...``): every node's part verified against that node's own key and
    proven complete or open (a withheld record fails it), no node flagged by the
    witness; the figures are the sum over the nodes, each evaluation's attestation the
    latest across them (as the store gives it).

    Raises:
        EvidenceError: it fails verification.
        UsageError: it is of another selection, or ``fingerprint`` is given.
    """
    from agent.accounting.records import LedgerRecord
    from agent.compliance.gate import latest_across_nodes
    from agent.ledger.cluster_bundle import verify_cluster_bundle

    if fingerprint:
        raise UsageError("--key-fingerprint pins one key; a cluster bundle holds each "
                         "node's own, each checked against it (`flopledger verify "
                         f"{printable(str(path), 400)}` names them)")
    report = verify_cluster_bundle(path, doc)
    _verified(f"the cluster bundle {path}", path,
              [*report.problems, *(p for n in report.nodes for p in n.report.problems),
               *(f"flagged by the witness: {f}" for f in report.flagged)])
    _of_model(path, report.selection, model, " --ledger postgresql://...")
    # Verified above; the verification let go of the nodes' records, read them again.
    fresh = json.loads(path.read_text())
    records = [LedgerRecord.decode(str(e["body"]).encode())
               for node_doc in fresh["nodes"] for e in node_doc["records"]]
    statements = [s for n in report.nodes for s in n.report.statements]
    states = sorted({state for n in report.nodes for state in n.report.run_states})
    evidence = {"kind": "cluster-bundle", "path": str(path), "records": len(records),
                "statements": len(statements), "run_states": states,
                "attestation_order": "latest by (the time the node recorded it, node, "
                                     "record number)",
                "nodes": [{"node": n.node, "node_key": n.node_key,
                           "key_fingerprint": n.report.key_fingerprint,
                           "records": n.report.records, "run_states": n.report.run_states}
                          for n in report.nodes]}
    line = (f"evidence  cluster bundle {printable(str(path), 400)}: verified; "
            f"{len(records)} records and {len(statements)} statements of model "
            f"{printable(model)} from {len(report.nodes)} node(s), each against its own key"
            f" (runs: {', '.join(states) or 'none'})")
    return Evidence(evidence, line, records, [], {}, statements,
                    attested=latest_across_nodes(statements, model))


def _cluster_evidence(args: argparse.Namespace, config: Config, url: str, model: str,
                      registry: Registry) -> Evidence:
    """The cluster store, verified first (every node's records, heads and signatures, the
    kept totals, the witness's flags), then read in one transaction: the model's figures
    from the kept totals of every node, its attestations from every node's statements.

    Verification and the read are two transactions: records that reach the store
    between them are counted in the figures (more compute can only place the model in a
    more capable tier), but their statements are not (an attestation counts only once
    verified).

    Raises:
        EvidenceError: the store fails verification.
        PgError, ClusterReadError: it cannot be reached or read.
    """
    from agent.cli.thresholds import store_text
    from agent.compliance.gate import FamilyCounts, figures_of, latest_across_nodes
    from agent.ledger.pg_verify import verify_cluster_url

    settings = config.cluster
    report = verify_cluster_url(url, password_file=settings.password_file,
                                password_env=settings.password_env)
    if not report.ok:
        problems = [*report.problems, *(p for n in report.nodes for p in n.problems)]
        more = (f" (and {len(problems) - 1} more)" if len(problems) > 1 else "")
        raise EvidenceError(f"the cluster ledger {report.where} fails verification: "
                            f"{printable(problems[0], 800)}{more}: `flopledger verify "
                            f"--ledger {shlex.quote(report.where)}`")
    verified = {n.node.node_key: n.records for n in report.nodes}
    with open_cluster(args, config, model=model) as view:
        if view.flagged():
            raise EvidenceError(f"the cluster ledger {view.where} changed after it was "
                                f"verified: {view.warnings()[0].removeprefix('WARNING: ')}")
        later = {n.node_key: n.records - verified.get(n.node_key, 0) for n in view.nodes}
        lost = [n.label() for n in view.nodes if later[n.node_key] < 0]
        if lost:
            raise EvidenceError(f"the cluster ledger {view.where} changed after it was "
                                f"verified: it holds fewer records of {', '.join(lost)} "
                                "than it did")
        arrived = sum(later.values())

        def counted(family: frozenset[str]) -> FamilyCounts:
            counts = FamilyCounts()
            for name in sorted(family):
                counts.add(model, family, view.iter_records(model=name))
            return counts

        fig = figures_of(model, view.run_summaries(), config.models, registry, counted)
        statements = _verified_statements(view, model, verified)
        attested = latest_across_nodes(statements, model)
        line = f"evidence  {store_text(view, 'verified')}"
        if arrived:
            line += (f"\nNOTE      {arrived} record(s) reached the store after it was "
                     "verified: their compute is counted (more compute only places the "
                     "model higher), their statements are not")
        doc = {"kind": "cluster", "store": view.where, "records": view.records_held,
               "verified_records": report.records, "arrived_after_verification": arrived,
               "attestation_order": "latest by (the time the node recorded it, node, "
                                    "record number)",
               "nodes": [{"node": n.node, "key_fingerprint": n.fingerprint,
                          "records": n.records, "verified_records": verified.get(n.node_key, 0),
                          "head_size": n.head_size,
                          "root": n.head.root.hex() if n.head is not None else None,
                          "signed_at_ns": n.head.timestamp_ns if n.head is not None else None}
                         for n in view.nodes]}
    return Evidence(doc, line, [], [], {}, statements, fig, attested)


def _verified_statements(view: ClusterView, model: str, verified: Mapping[str, int]
                         ) -> list[LedgerRecord]:
    """Every node's attestation statements of ``model`` among its verified records."""
    from agent.compliance.attestations import KIND
    from agent.ledger.rows import BadRowError, Skipped, parse_body

    out = []
    for node_key, seq, body in view.rows(
            "SELECT node_key, seq, body FROM fl_records WHERE kind = %s AND model = %s"
            " ORDER BY node_key, seq", [KIND, model]):
        if seq >= verified.get(str(node_key), 0):
            continue
        try:
            out.append(parse_body(bytes(body) if isinstance(body, memoryview) else body,
                                  canonical=False, wrong_type=Skipped()))
        except BadRowError as e:  # verified a moment ago: the store changed since
            raise EvidenceError(f"the cluster ledger {view.where} changed after it was "
                                f"verified: record {seq} of node key {node_key}: {e}") from e
    return out


def cmd_gate(args: argparse.Namespace) -> int:
    """0 allowed; 3 mode not allowed; 4 evaluations missing or failed, or compute of
    unknown amount; 1 the evidence fails verification or the decision could not be
    recorded; 2 a bad argument, configuration or policy."""
    from agent.compliance.attestations import latest_attestations
    from agent.compliance.gate import decide, load_policy, model_figures
    from agent.compliance.thresholds import load_registry

    try:
        model = _name("model", args.model)
        wait_s = _wait_s(args.wait)
        if args.bundle and args.ledger:
            raise UsageError("give --ledger or --bundle, not both")
        url = cluster_url(args)
        if url is not None and args.key_fingerprint:
            raise UsageError("--key-fingerprint checks a ledger file or an audit bundle; "
                             "each node of the cluster store is checked against its own "
                             "key in fl_nodes")
        config = config_of(args)
        registry = load_registry(config.agent.thresholds_file)
        policy_path = Path(args.policy) if args.policy else bundled_config("release.toml")
        policy = load_policy(policy_path, registry)
        path: Path | None = None
        try:
            if url is not None:
                evidence = _cluster_evidence(args, config, url, model, registry)
            elif args.bundle:
                path = Path(args.bundle)
                evidence = _bundle_evidence(path, model, args.key_fingerprint)
            else:
                path = ledger_path(args, config)
                evidence = _ledger_evidence(path, model, args.key_fingerprint)
        except EvidenceError as e:
            print(f"flopledger: {e}", file=sys.stderr)
            return EXIT_FAILED
        fig = (evidence.figures if evidence.figures is not None else model_figures(
            model, evidence.sealed, evidence.unsealed, evidence.run_meta, config.models,
            registry))
        attested = (evidence.attested if evidence.attested is not None
                    else latest_attestations(evidence.statements, model))
        decision = decide(policy, registry, fig, args.mode, attested,
                          allow_unmeasured=args.allow_unmeasured)
        time_ns = time.time_ns()
        message_id = uuid.uuid4().hex
        doc = {**decision.to_json(), "policy_sha256": policy.sha256,
               "evidence": evidence.doc, "time_ns": time_ns}
        if args.format == "text":
            print(evidence.line)
            for line in decision.lines():
                print(line)
            sys.stdout.flush()
        status = decision.exit_code
        if args.bundle:
            recorded = Recorded("not-recorded", reason="a bundle is read-only evidence")
        elif path is None:
            recorded = Recorded("not-recorded", reason=CLUSTER_NOT_RECORDED)
        else:
            try:
                recorded = record_statement(
                    args, config, path, "gate", model, {**doc, "message_id": message_id},
                    {"model": model, "decision": doc}, message_id, time_ns)
            except UsageError:
                raise
            except Exception as e:  # noqa: BLE001 - any failure to record is said, exit 1
                recorded = Recorded("failed", reason=str(e) or type(e).__name__)
            if recorded.status in ("failed", "rejected"):
                status = EXIT_FAILED
    except UsageError as e:
        print(f"flopledger: {e}", file=sys.stderr)
        return EXIT_USAGE
    if args.format == "json":
        print(json.dumps({**doc, "exit_code": status, "decision_exit_code":
                          decision.exit_code, "recorded": recorded.to_json()}, indent=1,
                         sort_keys=True))
    elif recorded.status != "failed":
        print(recorded_line("the decision", recorded, path or "", wait_s))
    if recorded.status == "failed":
        print(f"flopledger: the decision could not be recorded ({printable(recorded.reason, 800)})"
              "; exit 1: a gate decision that is not in the ledger does not count",
              file=sys.stderr)
    return status


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``attest`` and ``gate``."""
    attest = sub.add_parser(
        "attest", help="record a signed attestation of an evaluation of a model")
    attest.add_argument("model")
    attest.add_argument("--evaluation", required=True, help="the evaluation's name")
    attest.add_argument("--result", required=True, help="pass, fail or score=X")
    attest.add_argument("--evidence", required=True,
                        help="where the results are: a URI with a scheme, or an absolute path")
    attest.add_argument("--by", help="who attests (default: the login user)")
    attest.add_argument("--wait", type=float, default=DEFAULT_WAIT_S,
                        help="seconds to wait for the running agent to record it (default 15)")
    add_ledger_args(attest)
    attest.set_defaults(func=cmd_attest)

    gate = sub.add_parser(
        "gate", help="decide whether a model may be released in a mode, per a release policy")
    gate.add_argument("model")
    gate.add_argument("--mode", required=True, metavar="MODE",
                      choices=LazyChoices("agent.compliance.gate", "MODES"),
                      help="the release mode: %(choices)s")
    gate.add_argument("--policy", help="release policy TOML (default: the shipped "
                                       "agent/data/release.toml)")
    gate.add_argument("--bundle", help="an audit bundle of the model (flopledger export "
                                       "--model) instead of the ledger")
    gate.add_argument("--format", choices=("text", "json"), default="text")
    gate.add_argument("--allow-unmeasured", action="store_true",
                      help="place a model whose compute is partly of unknown amount by what "
                           "is measured")
    gate.add_argument("--key-fingerprint", help="fail unless the evidence is signed by this key")
    gate.add_argument("--wait", type=float, default=DEFAULT_WAIT_S,
                      help="seconds to wait for the running agent to record the decision")
    add_ledger_args(gate)
    gate.set_defaults(func=cmd_gate)
