"""The ledger's commands: ``verify``, ``export``, ``runs``, ``show``, ``models`` and
``recover``.

``runs``, ``show`` and ``models`` (and ``report``) check the ledger first: one that
fails its consistency checks gets a WARNING line at the top, what can still be read
below it, and exit status 1.

``runs``, ``show``, ``export`` and ``report`` each read the ledger at one moment and
state the figures of the records its latest signed head covers, then on a line of
their own the records not yet sealed (count and FLOP); read at the same moment, the
four agree.

``runs``, ``show``, ``models`` and ``verify`` also read the cluster store
(``--ledger postgresql://...``): the runs' totals over every node, each node's latest
signed head, and a WARNING at the top (exit 1) for a node the witness flagged. The
commands state both through one code path: :class:`ReadView` is what they read of
either."""

from __future__ import annotations

import argparse
import contextlib
import json
import shlex
import sys
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from agent import figures
from agent.accounting.names import file_stem, printable
from agent.cli.common import (
    add_ledger_args,
    cluster_url,
    config_of,
    ledger_arg,
    ledger_path,
    names_cluster,
    open_cluster,
)

if TYPE_CHECKING:
    from agent.accounting.records import LedgerRecord
    from agent.config import Config
    from agent.ledger.pg_query import ClusterNode, ClusterView
    from agent.ledger.query import LedgerView, RunSummary, Unsealed


def bundle_file_name(kind: str, name: str) -> str:
    """The default file of ``export --run``/``--model``: in the current directory,
    whatever the name holds (``/``, ``..``, a newline)."""
    return f"flopledger-{kind}-{file_stem(name)}.json"


def ledger_warnings(path: Path) -> tuple[list[str], bool]:
    """WARNING lines for the top of a read command's output, and whether the ledger
    fails its consistency checks. A recorded discontinuity is said, but is no failure:
    the ledger after it is sound."""
    from agent.ledger.integrity import check_ledger
    from agent.ledger.mirror import head_file
    from agent.ledger.verify import describe_discontinuity

    if not path.is_file() and not head_file(path).is_file():
        return [], False  # never a ledger here: the command itself says so
    check = check_ledger(path)
    lines = [f"WARNING: {describe_discontinuity(r)}" for r in check.discontinuities]
    if not check.ok:
        lines.insert(0, f"WARNING: {check.headline()}")
    return [printable(line, 4000) for line in lines], not check.ok


def _warn(path: Path) -> bool:
    lines, damaged = ledger_warnings(path)
    for line in lines:
        print(line)
    return damaged


class ReadView(Protocol):
    """What ``runs``, ``show`` and ``models`` read: a node's ledger at one moment
    (:class:`agent.ledger.query.LedgerView`) or the cluster store in one transaction
    (:class:`agent.ledger.pg_query.ClusterView`)."""

    @property
    def sealed(self) -> Iterable[LedgerRecord]: ...

    def summaries(self, records: Iterable[LedgerRecord] | None = None
                  ) -> dict[str, RunSummary]: ...

    def unsealed_of(self, *, run: str | None = None, model: str | None = None
                    ) -> Unsealed: ...


@dataclass(frozen=True, slots=True)
class _Read:
    """What a read command states: the ledger file's view or the cluster store's, where
    it was read (the file, or the store's URL without password), and whether the
    warnings printed above it fail the command."""

    where: str
    damaged: bool
    local: LedgerView | None = None
    cluster: ClusterView | None = None

    @property
    def view(self) -> ReadView:
        view: ReadView | None = self.cluster if self.cluster is not None else self.local
        assert view is not None
        return view

    def tail_lines(self, unsealed: Unsealed, nodes: Iterable[ClusterNode] = ()) -> list[str]:
        """What the figures above are of: the ledger's signed head and its unsealed
        records, or the cluster's nodes (and the latest signed head of ``nodes``)."""
        if self.cluster is not None:
            return cluster_lines(self.cluster, nodes)
        assert self.local is not None
        return head_lines(self.local, unsealed)


@contextlib.contextmanager
def _reading(args: argparse.Namespace, config: Config | None = None, *,
             run: str | None = None) -> Iterator[_Read]:
    """Print the WARNING lines of what ``--ledger`` names, then give what the command
    states: the ledger file read at one moment (``run``'s records), or the cluster store
    read in one transaction, closed when the command is done."""
    from agent.ledger.query import read_view

    if cluster_url(args) is None:
        path = ledger_path(args, config)
        damaged = _warn(path)
        yield _Read(str(path), damaged, local=read_view(path, run=run))
        return
    with open_cluster(args, config, run=run) as view:
        for line in view.warnings():
            print(printable(line, 4000))
        yield _Read(view.where, bool(view.flagged()), cluster=view)


def _looks_like_bundle(path: Path) -> bool:
    """A bundle is JSON; anything else given to ``verify`` is checked as a ledger (a
    damaged one need not even start like a database)."""
    try:
        with path.open("rb") as f:
            return f.read(64).lstrip()[:1] == b"{"
    except OSError:
        return False


def cmd_verify(args: argparse.Namespace) -> int:
    """0 if every check of the ledger or audit bundle passed, else 1 (energy
    plausibility WARNINGs leave it unchanged)."""
    from agent.ledger.bundle import verify_bundle, verify_bundle_doc
    from agent.ledger.cluster_bundle import is_cluster_bundle
    from agent.ledger.verify import verify_ledger

    url = args.path if names_cluster(args.path) else cluster_url(args)
    if url is not None:
        return _verify_cluster(args, url)
    path = Path(args.path) if args.path else ledger_path(args)
    is_bundle = path.is_file() and _looks_like_bundle(path)
    if is_bundle:
        doc = _read_json(path)
        if is_cluster_bundle(doc):
            return _verify_cluster_bundle(args, path, doc)
        bundle = (verify_bundle(path, args.key_fingerprint) if doc is None else
                  verify_bundle_doc(doc, path, args.key_fingerprint))
        what = ", ".join(f"{k} {v}" for k, v in bundle.selection.items())
        print(f"audit bundle {path}: {what}; {bundle.records} records; "
              f"{len(bundle.statements)} statements; signed by key {bundle.key_fingerprint}")
        if bundle.totals:
            t = bundle.totals
            print(f"  FLOP {figures.band(t['flop_low'], t['flop_central'], t['flop_high'])}")
        for line in bundle.completeness:
            if not line.startswith("INCOMPLETE"):  # those are printed as FAIL below
                print(f"  {printable(line, 4000)}")
        problems = bundle.problems
    else:
        from agent.sources.specs import load_spec_table

        # The figures are held to the physical maximum of the GPUs in the spec table the
        # agent used (``--config``'s, else the bundled one); implausible is a WARNING.
        spec_file = config_of(args).agent.spec_file if args.config else None
        report = verify_ledger(path, args.key_fingerprint,
                               specs=load_spec_table(spec_file).specs)
        print(f"ledger {path}: {report.records} records, {report.heads} signed tree heads; "
              f"key {report.key_fingerprint or '?'}")
        if report.statements:
            print(f"  statements: {report.statements_text()}")
        problems = report.problems
        for note in report.notes:
            print(f"  NOTE {printable(note, 4000)}")
        for warning in report.warnings:
            print(f"  WARNING {printable(warning, 4000)}")
    for p in problems:
        print(f"  FAIL {printable(p, 4000)}")
    print("OK: every check passed" if not problems else f"FAILED: {len(problems)} problem(s)")
    return 0 if not problems else 1


def _read_json(path: Path) -> object | None:
    """The JSON document in ``path``, or None if it cannot be read as one (the
    verification then says why)."""
    try:
        doc: object = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError):
        return None
    return doc


def _verify_cluster_bundle(args: argparse.Namespace, path: Path, doc: object) -> int:
    """Every node's bundle, one line each with its completeness lines and FAILs below;
    then the whole: the totals, and complete only if every node is."""
    from agent.ledger.cluster_bundle import verify_cluster_bundle

    if args.key_fingerprint:
        print("flopledger: --key-fingerprint checks a ledger file or an audit bundle; each "
              "node of a cluster bundle is checked against its own key (the SHA-256 of which "
              "is its node key)", file=sys.stderr)
        return 2
    report = verify_cluster_bundle(path, doc)
    what = ", ".join(f"{k} {v}" for k, v in report.selection.items())
    print(printable(f"cluster audit bundle {path}: {what}; {len(report.nodes)} node(s), "
                    f"{report.records} records, {report.statements} statements", 4000))
    t = report.totals
    if t:
        print(f"  FLOP {figures.band(t['flop_low'], t['flop_central'], t['flop_high'])}, "
              f"energy {figures.energy(t['energy_mj'])} (the sum of the nodes' records)")
    for line in report.flagged:
        print(f"  WARNING {printable(line, 4000)}: flagged by the witness when exported; "
              "included on request")
    for p in report.problems:
        print(f"  FAIL {printable(p, 4000)}")
    for node in report.nodes:
        b = node.report
        print(printable(f"node {node.label()}: {b.records} records, {len(b.statements)} "
                        f"statements, signed by key {b.key_fingerprint or '?'}"
                        + (": OK" if b.ok else ": FAILED"), 4000))
        for line in b.completeness:
            if not line.startswith("INCOMPLETE"):  # those are printed as FAIL below
                print(f"  {printable(line, 4000)}")
        for p in b.problems:
            print(f"  FAIL {printable(p, 4000)}")
    print(printable(report.completeness_line(), 4000))
    print("OK: every check passed" if report.ok else
          f"FAILED: {report.problem_count} problem(s)")
    return 0 if report.ok else 1


def _verify_cluster(args: argparse.Namespace, url: str) -> int:
    """Every node of the cluster store, one line each, its FAIL lines below it."""
    from agent.ledger.pg_verify import verify_cluster_url

    if args.key_fingerprint:
        print("flopledger: --key-fingerprint checks a ledger file or an audit bundle; each "
              "node of the cluster store is checked against its own key in fl_nodes",
              file=sys.stderr)
        return 2
    settings = config_of(args).cluster
    report = verify_cluster_url(url, password_file=settings.password_file,
                                password_env=settings.password_env)
    print(f"cluster ledger {printable(report.where, 400)}: {len(report.nodes)} node(s), "
          f"{report.records} records")
    for p in report.problems:
        print(f"  FAIL {printable(p, 4000)}")
    for node in report.nodes:
        print(printable(node.line(), 4000))
        if node.statements:
            print(f"  statements: {node.statements_text()}")
        for p in node.problems:
            print(f"  FAIL {printable(p, 4000)}")
    for line in report.event_lines():
        print(f"  NOTE {printable(line, 4000)}")
    print("OK: every check passed" if report.ok else
          f"FAILED: {report.problem_count} problem(s)")
    return 0 if report.ok else 1


def cmd_export(args: argparse.Namespace) -> int:
    """0 once the bundle is written; 1 if nothing can be (nothing selected, a damaged
    ledger, flagged nodes in the cluster store without ``--allow-flagged``)."""
    from agent.ledger.bundle import export_bundle

    if cluster_url(args) is not None:
        return _export_cluster(args)
    if args.allow_flagged:
        print("flopledger: --allow-flagged is for the cluster store (--ledger "
              "postgresql://...): a node's own ledger is never flagged", file=sys.stderr)
        return 2
    path = ledger_path(args)
    name = args.run or args.model
    out = Path(args.output or bundle_file_name("run" if args.run else "model", name))
    summary = export_bundle(path, out, run=args.run, model=args.model)
    t = summary["totals"]
    head = summary["head"]
    print(f"wrote {printable(str(out))}: {t['records']} records, "
          f"{summary['statements']} statements, FLOP "
          f"{figures.band(t['flop_low'], t['flop_central'], t['flop_high'])}, under the "
          f"signed head of {head['size']} records at {figures.when(head['timestamp_ns'])}")
    left_out: Unsealed = summary["left_out"]
    if left_out.records:
        print(f"left out {left_out.text()}: not yet under a signed head; export again once "
              "their recording window has closed to include them")
    print(f"check it anywhere with: flopledger verify {printable(shlex.quote(str(out)))}")
    return 0


def _export_cluster(args: argparse.Namespace) -> int:
    """The cluster bundle of ``--run`` or ``--model`` from the store: one single-node
    bundle per node holding records of it, read in one transaction."""
    from agent.ledger.cluster_bundle import export_cluster_bundle

    name = args.run or args.model
    out = Path(args.output or bundle_file_name("cluster-run" if args.run else "cluster-model",
                                               name))
    with open_cluster(args) as view:
        done = export_cluster_bundle(view, out, run=args.run, model=args.model,
                                     allow_flagged=args.allow_flagged)
    t = done.totals
    print(printable(f"wrote {out}: cluster bundle of {len(done.nodes)} node(s), "
                    f"{t['records']} records, {done.statements} statements, FLOP ", 4000)
          + f"{figures.band(t['flop_low'], t['flop_central'], t['flop_high'])}; each node's "
          "under its latest signed head in the store")
    for n in done.flagged:
        print(f"WARNING: node {printable(n.label())}: flagged by the witness: "
              f"{printable(n.flagged or '', 4000)}; the bundle says so")
    print(f"check it anywhere with: flopledger verify {printable(shlex.quote(str(out)))}")
    return 0


def spec_bases_text(bases: Counter[str]) -> str:
    """``table``, or the share of samples on each basis, the table's last (``ceiling
    40%, table 60%``)."""
    total = sum(bases.values())
    if set(bases) <= {"table"}:
        return "table"
    order = sorted(bases.items(), key=lambda kv: (kv[0] == "table", -kv[1], kv[0]))
    return ", ".join(f"{basis} {n / total:.0%}" for basis, n in order)


def _off_table(bases: Counter[str]) -> bool:
    return bool(set(bases) - {"table"})


_BASIS_TEXT = {
    "derived": "derived: peak from the driver's compute capability, SM count and clock",
    "ceiling": "ceiling: only a name, peak at the largest of the GPU's era",
    "none": "none: no spec at all, counted as 0",
}


def _off_table_text(bases: Counter[str]) -> str:
    """What the bases other than ``table`` mean, for a WARNING line."""
    meaning = "; ".join(_BASIS_TEXT.get(b, b) for b in sorted(set(bases) - {"table"}))
    return f"rest on GPUs without a row in the spec table ({meaning}); band widened"


def head_lines(view: LedgerView, unsealed: Unsealed) -> list[str]:
    """The lines ``runs`` and ``show`` end with: the signed head their figures are those
    of, and the records that head does not cover yet (their own line, in no figure
    above it)."""
    head = view.head
    lines = [f"ledger    {view.head_size} records under signed head at "
             f"{figures.when(head.timestamp_ns)}, key {view.key_fingerprint}; the figures "
             "above are of the records it covers" if head is not None else
             "ledger    no signed head yet: the figures above cover no record"]
    if unsealed.records:
        runs = ", ".join(printable(r) for r in unsealed.runs)
        lines.append(f"unsealed  run(s) {runs}: {unsealed.text()}; not yet under a signed "
                     "head, so not in the figures above (sealed when their recording window "
                     "closes)")
    else:
        lines.append("unsealed  none")
    return lines


def cluster_lines(view: ClusterView, nodes: Iterable[ClusterNode] = ()) -> list[str]:
    """The lines ``runs`` and ``show`` end with on the cluster store: how many nodes and
    signed records the figures are of, then the latest signed head of each of ``nodes``."""
    where = printable(view.where, 400)
    if not view.nodes:
        lines = [f"cluster   {where}: no node has replicated to it yet; the figures above "
                 "cover no record"]
    else:
        under = sum(n.head_size for n in view.nodes)
        lines = [f"cluster   {where}: {len(view.nodes)} node(s), {under} records under their "
                 f"signed heads, the latest at {figures.when(view.latest_head_ns)}; the "
                 "figures above are of the records they cover"]
    for n in nodes:
        head = (f"{n.head_size} records under signed head at "
                f"{figures.when(n.head.timestamp_ns)}" if n.head is not None else
                "no signed head yet")
        flagged = f"; FLAGGED: {printable(n.flagged, 400)}" if n.flagged is not None else ""
        lines.append(f"node      {printable(n.label())}: {head}; last seen "
                     f"{figures.when(n.last_seen_ns)}{flagged}")
    return lines


def cmd_runs(args: argparse.Namespace) -> int:
    """0, or 1 if the ledger fails its checks or the cluster holds a flagged node. On
    the cluster store the table counts each run's nodes instead of its GPUs and has no
    spec column: neither is in the stored totals (``show RUN`` gives both)."""
    with _reading(args) as read:
        runs = read.view.summaries()
        cluster = read.cluster is not None
        count = f"{'nodes':>5}" if cluster else f"{'GPUs':>4}"
        header = (f"{'run':<28} {'model':<18} {'category':<16} {count}  "
                  f"{'FLOP central [low .. high]':<30} {'energy':>10}  {'first seen':<20} "
                  f"{'last seen':<20}")
        print(header.rstrip() if cluster else f"{header} spec")
        for r in sorted(runs.values(), key=lambda r: r.first_ns):
            n = f"{len(r.nodes):>5}" if cluster else f"{len(r.gpus):>4}"
            line = (f"{printable(r.run)[:28]:<28} {printable(r.model)[:18]:<18} "
                    f"{printable(r.category)[:16]:<16} {n}  "
                    f"{figures.band(r.flop_low, r.flop_central, r.flop_high):<30} "
                    f"{figures.energy(r.energy_mj):>10}  {figures.when(r.first_ns):<20} "
                    f"{figures.when(r.last_ns):<20}")
            print(line.rstrip() if cluster else f"{line} {spec_bases_text(r.spec_bases)}")
        if not runs:
            print("(no runs in the ledger yet)")
        off = [r for r in runs.values() if _off_table(r.spec_bases)]
        if off:
            bases = sum((r.spec_bases for r in off), Counter[str]())
            print(f"WARNING: the figures of {len(off)} run(s) {_off_table_text(bases)} (see "
                  "`flopledger show RUN`)")
        for line in read.tail_lines(read.view.unsealed_of()):
            print(line)
        return 1 if read.damaged else 0


def cmd_show(args: argparse.Namespace) -> int:
    """0, or 1 if the run is not in the ledger, the ledger fails its checks or the
    cluster holds a flagged node. On the cluster store, also the run's share on each
    node and the latest signed head of each."""
    from agent.ledger.query import RunSummary

    with _reading(args, run=args.run) as read:
        view = read.view
        runs = view.summaries()
        unsealed = view.unsealed_of(run=args.run)
        if args.run not in runs and not unsealed.records:
            print(f"flopledger: no run {args.run!r} in {read.where}", file=sys.stderr)
            return 1
        if args.run not in runs:
            # Only in the current windows so far: nothing a signed head vouches for yet.
            print(f"run       {printable(args.run)}")
            print("FLOP      0 under the signed head (no record of this run sealed yet)")
            for line in read.tail_lines(unsealed):
                print(line)
            return 1 if read.damaged else 0
        r = runs[args.run]
        span_s = (r.last_ns - r.first_ns) / 1e9
        print(f"run       {printable(r.run)}")
        print(f"model     {printable(r.model) or '-'}   category {printable(r.category)}")
        band = figures.band(r.flop_low, r.flop_central, r.flop_high)
        print(f"FLOP      {band}  (central [low .. high])")
        print(f"energy    {figures.energy(r.energy_mj)}")
        print(f"time      {figures.when(r.first_ns)} .. {figures.when(r.last_ns)} "
              f"({figures.duration(span_s)})")
        print(f"coverage  {r.samples} samples, {r.records} records on {len(r.gpus)} GPU(s), "
              f"{len(r.nodes)} node(s); gaps {figures.duration(r.gap_ns / 1e9)}")
        estimators = ", ".join(f"{k} {v}" for k, v in r.estimators.most_common())
        print(f"method    {estimators} (samples per estimator); splits "
              + ", ".join(f"{k} {v}" for k, v in r.splits.most_common()))
        print(f"spec      {spec_bases_text(r.spec_bases)} (samples per basis of the GPUs' "
              "peaks)")
        if _off_table(r.spec_bases):
            print(f"WARNING   these figures {_off_table_text(r.spec_bases)}")
        if r.meta:
            print("declared  " + ", ".join(printable(f"{k}={v}")
                                           for k, v in sorted(r.meta.items())))
        nodes: list[ClusterNode] = []
        incomplete = False
        if read.cluster is not None:
            print("per node:")
            for row in read.cluster.node_totals(run=args.run):
                s = row.summary
                nodes.append(row.node)
                print(f"  {printable(row.node.label()):<42} "
                      f"{figures.band(s.flop_low, s.flop_central, s.flop_high)}  "
                      f"{figures.energy(s.energy_mj)}, {s.records} records")
        print("per GPU:")
        per_gpu: dict[str, RunSummary] = {}
        for record in view.sealed:
            per_gpu.setdefault(record.gpu_uuid, RunSummary(args.run)).add(record)
        for uuid, g in sorted(per_gpu.items()):
            note = ""
            if _off_table(g.spec_bases):
                note = (f"  NOT IN THE SPEC TABLE: {spec_bases_text(g.spec_bases)}"
                        + (f" ({printable(g.spec_reason, 400)})" if g.spec_reason else ""))
            print(f"  {printable(uuid):<42} "
                  f"{figures.band(g.flop_low, g.flop_central, g.flop_high)}{note}")
        if read.cluster is not None:
            incomplete = _completeness_lines(read.cluster, args.run)
        for line in read.tail_lines(unsealed, nodes):
            print(line)
        # Quoted for a shell, then escaped for the terminal: a run id may hold anything.
        if read.cluster is not None:
            print(f"verify    flopledger verify --ledger {printable(shlex.quote(read.where))}")
        elif read.local is not None and read.local.head is not None:
            print(f"verify    flopledger export --run {printable(shlex.quote(args.run))} && "
                  f"flopledger verify {bundle_file_name('run', args.run)}")
        return 1 if read.damaged or incomplete else 0


def _completeness_lines(view: ClusterView, run: str) -> bool:
    """Print whether the store holds every record of ``run`` each node's latest
    run-close counts, node by node; True if a node's are not all there."""
    from agent.ledger.bundle import COMPLETE, INCOMPLETE, OPEN, UNPROVEN

    found = view.run_completeness(run)
    states = Counter(c.of.state for c in found)
    done = states[COMPLETE]
    if found and done == len(found):
        print(f"complete  on all {len(found)} node(s): each closed the run and the store "
              "holds every record its latest close counts")
    else:
        words = {INCOMPLETE: "INCOMPLETE (records missing)", OPEN: "open (not closed)",
                 UNPROVEN: "not proven (records written before they were numbered)"}
        rest = ", ".join(f"{states[state]} {words[state]}" for state in words
                         if states[state])
        print(f"complete  {'NO' if states[INCOMPLETE] else 'NOT proven'}: {done} of "
              f"{len(found)} node(s) complete; {rest}")
    print("completeness per node:")
    for c in found:
        print(f"  key {c.node.fingerprint}  {printable(c.of.line, 4000)}")
    return states[INCOMPLETE] > 0


def cmd_models(args: argparse.Namespace) -> int:
    """Each model's totals per scope, with the lineage of the runs' declared metadata
    and of the config's ``[models]``; 1 as ``runs``."""
    from agent.compliance.lineage import load_scopes, model_view

    config = config_of(args)
    with _reading(args, config) as read:
        summaries = read.view.summaries()
        damaged = read.damaged
    view = model_view(config.models, load_scopes(config.agent.thresholds_file), summaries)
    names = view.model_names()
    if not names:
        print("(no models in the ledger or the config yet)")
        return 1 if damaged else 0
    for name in names:
        bases = view.lineage.ancestors(name)
        own = sum(1 for r in view.runs if r.model == name)
        print(f"{printable(name)}: {own} run(s)"
              + (f", inherits from {printable(', '.join(bases))}" if bases else ""))
        for scope, f in view.totals(name).items():
            print(f"  {scope:<18} {figures.band(f.low, f.central, f.high)}")
    return 1 if damaged else 0


def cmd_recover(args: argparse.Namespace) -> int:
    """0 once a new ledger records the discontinuity; 1 if there is nothing to recover
    or nothing can be; 2 if an agent holds the state directory."""
    from agent.accounting.band import Band
    from agent.ledger.lock import StateLockedError
    from agent.ledger.recover import recover_ledger
    from agent.ledger.signing import load_or_create_key

    config = config_of(args)
    path = ledger_path(args, config)
    # The key the ledger was signed with sits beside it; never create one here.
    key_path = path.parent / "node.key" if args.ledger else config.agent.state_dir / "node.key"
    if not key_path.is_file():
        print(f"flopledger: no node key at {key_path}: recover signs the new ledger with the "
              "key of the old one", file=sys.stderr)
        return 1
    try:
        done = recover_ledger(path, load_or_create_key(key_path), config.agent.node,
                              reason=args.reason or "", accept_loss=args.accept_loss)
    except StateLockedError as e:
        print(f"flopledger: {e}", file=sys.stderr)
        return 2
    for src, dst in done.moved:
        print(f"moved aside  {printable(src.name)} -> {printable(dst.name)} (kept, not deleted)")
    # Each pair's sums count once per GPU and once per run: summed over pairs, once.
    low, central, high = sum((p.totals.flop for p in done.carried.values()), Band.exact(0))
    print(f"new ledger   {printable(str(path))}: record 0 states the discontinuity; records "
          f"1..{len(done.carried)} carry the sums of {len(done.carried)} (GPU, run) pair(s) "
          f"over, FLOP {figures.band(low, central, high)}")
    print(f"carried from {printable(done.carried_from, 4000)}")
    print("from now on `flopledger verify` reports this discontinuity; the agent can start")
    return 0


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``verify``, ``export``, ``runs``, ``show``, ``models`` and ``recover``."""
    verify = sub.add_parser("verify", help="check a ledger file or an audit bundle")
    verify.add_argument("path", nargs="?", type=ledger_arg,
                        help="ledger.sqlite, a bundle .json, or the cluster store: "
                             "postgresql://user@host:5432/db")
    verify.add_argument("--key-fingerprint", help="fail unless signed by this key")
    add_ledger_args(verify)
    verify.set_defaults(func=cmd_verify)

    export = sub.add_parser("export", help="write a self-contained audit bundle")
    which = export.add_mutually_exclusive_group(required=True)
    which.add_argument("--run")
    which.add_argument("--model")
    export.add_argument("-o", "--output", help="bundle file (default: flopledger-<run>.json)")
    export.add_argument("--allow-flagged", action="store_true",
                        help="from the cluster store: export even if the witness flagged "
                             "nodes (the bundle names them)")
    add_ledger_args(export)
    export.set_defaults(func=cmd_export)

    runs = sub.add_parser("runs", help="table of the runs in the ledger")
    add_ledger_args(runs)
    runs.set_defaults(func=cmd_runs)

    show = sub.add_parser("show", help="one run in detail")
    show.add_argument("run")
    add_ledger_args(show)
    show.set_defaults(func=cmd_show)

    models = sub.add_parser("models", help="per-model totals per regulatory scope, with lineage")
    add_ledger_args(models)
    models.set_defaults(func=cmd_models)

    recover = sub.add_parser(
        "recover", help="set a damaged ledger aside and start a new one that records the "
                        "discontinuity (the agent must be stopped)")
    recover.add_argument("--reason", help="why, in the discontinuity record")
    recover.add_argument("--accept-loss", action="store_true",
                         help="recover even when nothing can be carried over (every total "
                              "restarts from zero)")
    add_ledger_args(recover)
    recover.set_defaults(func=cmd_recover)
