"""Cluster audit bundles: one run or one model exported from the cluster store, node by
node, each node's part a single-node audit bundle (:mod:`agent.ledger.bundle`) proven
against that node's own key.

The file is one JSON object::

    {"format": "flopledger-cluster-bundle-1", "selection": {"run": ...},
     "flagged": [{"node", "node_key", "reason"}, ...],
     "node_keys": [K1, K2, ...], "nodes": [B1, B2, ...], "totals": {...}}

``nodes[i]`` is exactly what ``flopledger export`` writes for that node's ledger (the
same JSON whether made from the node's SQLite file or from the store's copy of it), and
``node_keys[i]`` the store's name for that node: the SHA-256 of ``nodes[i]``'s public key.
``totals`` are the sums of every node's records. ``flagged`` lists the nodes the witness
had flagged when the bundle was made (only written with ``allow_flagged``).

:func:`verify_cluster_bundle` checks every node's bundle with nothing but the file, each
against its own key; no node may appear twice (its records would count twice); the
totals must be the sum of the nodes' records. The bundle is complete when every node's
is: each node's latest ``run-close`` counts exactly the records the bundle holds of it. A
node that ran the selection but holds none of it in the bundle cannot be seen from the
file: the bundle proves each node it names complete, not that it names every node.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.ledger.bundle import (
    COMPLETE,
    INCOMPLETE,
    BundleReport,
    NodeSource,
    build_bundle,
    verify_bundle_doc,
)
from agent.ledger.errors import LedgerError
from agent.ledger.pg_query import ClusterNode, ClusterView
from agent.ledger.signing import fingerprint

CLUSTER_BUNDLE_FORMAT = "flopledger-cluster-bundle-1"
TOTAL_KEYS = ("flop_low", "flop_central", "flop_high", "energy_mj", "gap_ns", "records")


class FlaggedNodesError(LedgerError):
    """The store holds nodes the witness flagged: no bundle is written unless asked to
    include them anyway."""


class ClusterExportError(LedgerError):
    """The store's copy of a node cannot make a bundle that would verify (its records,
    heads or kept totals disagree): nothing written. One line naming the node."""


@dataclass(frozen=True, slots=True)
class ClusterExport:
    """What :func:`export_cluster_bundle` wrote: the selection, the nodes (in the file's
    order), how many records and statements, the totals and the flagged nodes it holds
    anyway."""

    selection: dict[str, str]
    nodes: list[ClusterNode]
    records: int
    statements: int
    totals: dict[str, int]
    flagged: list[ClusterNode]


def flagged_text(nodes: Sequence[ClusterNode]) -> str:
    """``node-3 (key 0123456789abcdef): forked: ...; ...``."""
    return "; ".join(f"{n.label()}: {n.flagged}" for n in nodes)


def export_cluster_bundle(view: ClusterView, out: Path, *, run: str | None = None,
                          model: str | None = None,
                          allow_flagged: bool = False) -> ClusterExport:
    """Write the cluster bundle of one run or one model, as ``view`` (one transaction)
    holds it: one single-node bundle per node key holding a record or statement of the
    selection, each under that node's latest head in the store. Written to a temporary
    file beside ``out`` and renamed: on any failure, nothing is created.

    Raises:
        ValueError: neither or both of ``run`` and ``model``, or nothing selected.
        FlaggedNodesError: the store holds flagged nodes and ``allow_flagged`` is False.
        ClusterExportError: a node's copy in the store disagrees with itself.
        ClusterReadError: the store cannot be read.
        OSError: ``out`` cannot be written.
    """
    if (run is None) == (model is None):
        raise ValueError("give exactly one of run or model")
    what = f"run {run!r}" if run is not None else f"model {model!r}"
    flagged = view.flagged()
    if flagged and not allow_flagged:
        raise FlaggedNodesError(
            f"{out}: not written: the witness flagged {len(flagged)} node(s) of "
            f"{view.where}: {flagged_text(flagged)}; give --allow-flagged to export anyway "
            "(the bundle then says so)")
    nodes = view.selection_nodes(run=run, model=model)
    if not nodes:
        raise ValueError(f"{view.where}: no record of {what}")
    kept = {t.node.node_key: t.summary for t in view.node_totals(run=run)} if run else {}
    selection: dict[str, str] = {"run": run} if run is not None else {"model": str(model)}
    totals = dict.fromkeys(TOTAL_KEYS, 0)
    statements = 0
    if not out.parent.is_dir():
        raise ValueError(f"{out}: no directory {out.parent} to write it in")
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
    tmp = Path(tmp_name)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # as a file written directly would be
        with os.fdopen(fd, "w") as f:
            head = {"format": CLUSTER_BUNDLE_FORMAT, "selection": selection,
                    "flagged": [{"node": n.node, "node_key": n.node_key, "reason": n.flagged}
                                for n in flagged],
                    "node_keys": [n.node_key for n in nodes]}
            # Written node by node: memory holds one node's bundle at a time.
            f.write(json.dumps(head, sort_keys=True)[:-1] + ',\n"nodes": [\n')
            for i, node in enumerate(nodes):
                doc, summary = _node_bundle(view, node, run, model)
                node_totals = summary["totals"]
                if run is not None:
                    _check_kept(view, node, run, node_totals, kept.get(node.node_key))
                for k in TOTAL_KEYS:
                    totals[k] += int(node_totals[k])
                statements += int(summary["statements"])
                f.write(("" if i == 0 else ",\n") + json.dumps(doc, sort_keys=True))
            f.write('\n],\n"totals": ' + json.dumps(totals, sort_keys=True) + "}\n")
        tmp.replace(out)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return ClusterExport(selection, nodes, totals["records"], statements, totals, flagged)


def _node_bundle(view: ClusterView, node: ClusterNode, run: str | None,
                 model: str | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """One node's single-node bundle, from the store's copy of its ledger."""
    where = f"{view.where}: node {node.label()}"
    heads = view.heads_of(node)
    if node.head is None or not heads or heads[-1] != node.head:
        raise ClusterExportError(f"{where}: its latest signed head is not the last of its "
                                 f"heads (run `flopledger verify --ledger {view.where}`)")
    size = node.head.size
    source = NodeSource(node.node, node.origin, node.public_key, fingerprint(node.public_key),
                        heads, view.leaf_hashes(node, size),
                        view.bodies(node, run=run, model=model, below=size))
    try:
        return build_bundle(source, run=run, model=model, where=where)
    except ValueError as e:
        raise ClusterExportError(f"{e} (run `flopledger verify --ledger {view.where}`)") from e


def _check_kept(view: ClusterView, node: ClusterNode, run: str, totals: dict[str, int],
                kept: Any) -> None:
    """The bundle's totals of ``node`` must be what the store keeps for it (what
    ``runs`` and ``show`` state): else the store is damaged."""
    have = (totals["flop_low"], totals["flop_central"], totals["flop_high"],
            totals["energy_mj"], totals["records"])
    want = ((kept.flop_low, kept.flop_central, kept.flop_high, kept.energy_mj, kept.records)
            if kept is not None else (0, 0, 0, 0, 0))
    if have != want:
        raise ClusterExportError(
            f"{view.where}: node {node.label()}: the totals the store keeps for run "
            f"{run!r} (FLOP central {want[1]}, {want[4]} records) are not the sum of its "
            f"records (FLOP central {have[1]}, {have[4]} records); run `flopledger verify "
            f"--ledger {view.where}`")


# ---------------------------------------------------------------------- verification


@dataclass(slots=True)
class NodeBundleReport:
    """One node of a cluster bundle: its key as the bundle names it, and what its
    single-node bundle's verification found."""

    node_key: str
    node: str
    report: BundleReport

    def label(self) -> str:
        return f"{self.node} (key {self.node_key[:16]})"


@dataclass(slots=True)
class ClusterBundleReport:
    """What :func:`verify_cluster_bundle` found: per node, and of the whole."""

    path: Path
    selection: dict[str, Any] = field(default_factory=dict)
    nodes: list[NodeBundleReport] = field(default_factory=list)
    # Summed from the nodes' records (not as stated).
    totals: dict[str, int] = field(default_factory=dict)
    flagged: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems and all(n.report.ok for n in self.nodes)

    @property
    def problem_count(self) -> int:
        return len(self.problems) + sum(len(n.report.problems) for n in self.nodes)

    @property
    def records(self) -> int:
        return sum(n.report.records for n in self.nodes)

    @property
    def statements(self) -> int:
        return sum(len(n.report.statements) for n in self.nodes)

    @property
    def complete(self) -> bool | None:
        """True only if every node's bundle proves its runs complete; False if one is
        missing records; None otherwise (a run open, not proven, or no node)."""
        if not self.nodes:
            return None
        states = [n.report.complete for n in self.nodes]
        return False if False in states else True if all(states) else None

    def completeness_line(self) -> str:
        """``complete: ...`` or ``NOT complete: ...`` naming the nodes that are not."""
        total = len(self.nodes)
        proven = [n for n in self.nodes if n.report.complete is True]
        if self.complete is True:
            return (f"complete: each of the {total} node(s) closed its run(s) of the "
                    "selection and the bundle holds every record its latest close counts")
        others = [n for n in self.nodes if n.report.complete is not True]
        named = ", ".join(f"{n.label()} {_state_word(n.report)}" for n in others[:8])
        more = f" and {len(others) - 8} more" if len(others) > 8 else ""
        return (f"NOT complete: {len(proven)} of {total} node(s) proven complete; not "
                f"{named}{more}")


def _state_word(report: BundleReport) -> str:
    """``incomplete``, ``open``, ``not proven``: the worst state of a node's runs."""
    states = set(report.run_states)
    if INCOMPLETE in states or report.complete is False:
        return "(INCOMPLETE)"
    if "open" in states:
        return "(open)"
    if states - {COMPLETE}:
        return "(not proven)"
    return "(no compute record)"


def is_cluster_bundle(doc: object) -> bool:
    return isinstance(doc, dict) and doc.get("format") == CLUSTER_BUNDLE_FORMAT


def verify_cluster_bundle(path: Path, doc: object | None = None) -> ClusterBundleReport:
    """Check a cluster bundle with nothing but its contents (``doc``: already read from
    ``path``). Never raises for what the file holds."""
    report = ClusterBundleReport(path)
    p = report.problems
    try:
        if doc is None:
            doc = json.loads(path.read_text())
        if not is_cluster_bundle(doc):
            p.append(f"{path}: not a {CLUSTER_BUNDLE_FORMAT} file")
            return report
        assert isinstance(doc, dict)
        selection = doc["selection"]
        nodes = doc["nodes"]
        keys = doc["node_keys"]
        stated = doc["totals"]
        flagged = doc.get("flagged", [])
        if not isinstance(selection, dict) or not isinstance(stated, dict):
            raise TypeError("selection and totals must be objects")
        if not isinstance(nodes, list) or not isinstance(keys, list) or not isinstance(
                flagged, list):
            raise TypeError("nodes, node_keys and flagged must be lists")
        report.flagged = [f"node {f['node']} (key {str(f['node_key'])[:16]}): {f['reason']}"
                          for f in flagged]
    except (OSError, ValueError, KeyError, TypeError, RecursionError) as e:
        p.append(f"{path}: unreadable or malformed cluster bundle ({e})")
        return report
    report.selection = dict(selection)
    if set(selection) not in ({"run"}, {"model"}):
        p.append(f"selection {selection!r}: expected one run or one model")
    if len(keys) != len(nodes):
        p.append(f"{len(nodes)} node bundle(s) but {len(keys)} node key(s)")
    seen: dict[str, int] = {}
    for i, node_doc in enumerate(nodes):
        name = node_doc.get("node") if isinstance(node_doc, dict) else None
        key = str(keys[i]) if i < len(keys) else "?"
        node = NodeBundleReport(key, str(name or f"#{i}"),
                                verify_bundle_doc(node_doc, path, where=f"node bundle {i}"))
        report.nodes.append(node)
        node.report.problems[:0] = _node_problems(node_doc, node, report.selection, seen, i)
        node.report.problems = [f"node {node.label()}: {x}" for x in node.report.problems]
        nodes[i] = None  # verified: its records need not stay in memory
    report.totals = dict.fromkeys(TOTAL_KEYS, 0)
    for node in report.nodes:
        for k in TOTAL_KEYS:
            report.totals[k] += int(node.report.totals.get(k, 0))
    if {k: stated.get(k) for k in TOTAL_KEYS} != report.totals:
        p.append("stated totals do not equal the sum of the nodes' records")
    return report


def _node_problems(doc: object, node: NodeBundleReport, selection: dict[str, Any],
                   seen: dict[str, int], index: int) -> list[str]:
    """What is wrong with a node's place in the cluster bundle (its key, its selection,
    a second copy of it)."""
    out: list[str] = []
    try:
        raw = _public_key(doc)
    except (KeyError, TypeError, ValueError):
        raw = None  # the node's own verification says it
    if raw is not None and hashlib.sha256(raw).hexdigest() != node.node_key:
        out.append(f"node key {node.node_key} is not the SHA-256 of the bundle's public key "
                   f"({hashlib.sha256(raw).hexdigest()})")
    if node.report.selection and node.report.selection != selection:
        out.append(f"a bundle of {node.report.selection!r}, not of the cluster bundle's "
                   f"selection {selection!r}")
    first = seen.setdefault(node.node_key, index)
    if first != index:
        out.append(f"the same node key as node bundle {first}: its records would count "
                   "twice")
    return out


def _public_key(doc: object) -> bytes:
    if not isinstance(doc, dict):
        raise TypeError("not an object")
    return base64.b64decode(str(doc["public_key"]), validate=True)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
