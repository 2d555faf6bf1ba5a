"""Two nodes whose union crosses thresholds neither crosses alone, replicated into a
throwaway PostgreSQL with the real replicator, and the same records appended to one
ledger file (the union), for the agent's own evaluation to compare with.

Both nodes run ``pt`` (pre-training ``base``, a 30-day plan); ``node-1`` also runs
``ft`` (fine-tuning ``chat`` from ``base``). The high bound of ``base`` over the union
is 0.57 of the EU's indicative GPAI threshold (1e23 FLOP); node-1 alone holds 0.26 of
it, node-2 0.32.
"""

from __future__ import annotations

import hashlib
import sqlite3
from dataclasses import dataclass, replace
from pathlib import Path

from agent.compliance.lineage import ModelInfo
from agent.compliance.thresholds import ThresholdSettings
from agent.ledger.query import iter_records
from agent.ledger.signing import load_or_create_key
from agent.ledger.store import Ledger, RunRow
from tests.ledger.cluster_nodes import replicate, write_node
from tests.ledger_helpers import SECOND, T0, record

PT = RunRow("pt", "base", "pre-training", {"plan.duration_s": 30 * 86400.0})
FT = RunRow("ft", "chat", "fine-tuning", {"base_models": ["base"]})
RUNS = {"pt": PT, "ft": FT}
# "chat" is someone else's model modified here: judged by the one-third rule.
MODELS = {"chat": ModelInfo("chat", ("base",), role="modifier")}
# Observation windows the few seconds of these ledgers pass, so a plan's projection
# becomes "will be met".
SETTINGS = ThresholdSettings(min_observation_s=1.0, min_observation_fraction=0.001)
# Just after the last record: every run is still running.
NOW_NS = T0 + 20 * SECOND
E21 = 10**21


@dataclass(frozen=True)
class Nodes:
    ledgers: dict[str, Path]  # by node name
    union: Path  # every record of both, in the store's order (node key, then seq)


def node_key(ledger: Path) -> str:
    with sqlite3.connect(ledger) as db:
        public = db.execute("SELECT value FROM meta WHERE key = 'public_key'").fetchone()[0]
    return hashlib.sha256(bytes.fromhex(public)).hexdigest()


def write_nodes(directory: Path) -> dict[str, Path]:
    """The two node ledgers."""
    one = write_node(directory / "node-1", "node-1", [
        [(0, PT, 12 * E21, "interval"), (1, FT, E21, "interval")],
        [(0, PT, 12 * E21, "interval"), (1, FT, 2 * E21, "interval")],
    ], RUNS)
    two = write_node(directory / "node-2", "node-2", [
        [(10, PT, 15 * E21, "interval")],
        [(10, PT, 15 * E21, "interval"), (11, PT, E21, "gap")],
    ], {"pt": PT})
    return {"node-1": one, "node-2": two}


def union_ledger(directory: Path, ledgers: dict[str, Path]) -> Path:
    """One ledger file holding every compute record of ``ledgers``, node key by node key
    in append order (as the store streams them), with the runs' metadata."""
    path = directory / "union" / "ledger.sqlite"
    path.parent.mkdir(parents=True)
    ledger = Ledger(path, "union", load_or_create_key(path.parent / "node.key"))
    for source in sorted(ledgers.values(), key=node_key):
        records = list(iter_records(source))
        ledger.append(records, max(r.end_ns for r in records), run_meta=RUNS)
    ledger.close()
    return path


def grow(ledger: Path, node: str) -> None:
    """One more checkpoint of ``pt`` on the node: ``base`` passes 0.8 of the threshold."""
    store = Ledger(ledger, node, load_or_create_key(ledger.parent / "node.key"))
    r = replace(record(10, 10, 15, run="pt", model="base", central=30 * E21), node=node)
    store.append([r], T0 + 15 * SECOND, run_meta={"pt": PT})
    store.close()


def build(directory: Path, url: str) -> Nodes:
    ledgers = write_nodes(directory)
    for path in ledgers.values():
        replicate(path, url)
    return Nodes(ledgers, union_ledger(directory, ledgers))
