"""A small cluster for the readers of the cluster ledger: node ledgers written with the
real :class:`agent.ledger.store.Ledger`, replicated into a throwaway PostgreSQL with the
real :class:`agent.ledger.replicate.Replicator`.

``node-1`` and ``node-2`` both run ``pt`` (pre-training ``base``); ``node-1`` also runs
``ft`` (fine-tuning ``chat`` from ``base``, which only node-1's runs table declares) and
has a declaration; ``node-2`` also runs ``solo`` (``other``) with one gap record. Their
GPUs differ (a GPU's UUID is unique in a cluster).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from agent.accounting.records import LedgerRecord, make_statement
from agent.ledger.pgconn import connect
from agent.ledger.replicate import Replicator
from agent.ledger.signing import load_or_create_key
from agent.ledger.store import Ledger, RunRow
from tests.ledger_helpers import SECOND, T0, record

PT = RunRow("pt", "base", "pre-training", {"plan": {"tokens": 10**12}})
FT = RunRow("ft", "chat", "fine-tuning", {"base_models": ["base"]})
SOLO = RunRow("solo", "other", "pre-training", {})


@dataclass(frozen=True)
class ClusterNodes:
    """The node ledgers' paths by node name, and the store's URL."""

    url: str
    ledgers: dict[str, Path]


def _compute(node: str, gpu: int, t_s: float, run: RunRow, central: int,
             kind: str = "interval") -> LedgerRecord:
    r = record(gpu, t_s, t_s + 5, run=run.run, model=run.model, central=central, kind=kind)
    r = replace(r, node=node, category=run.category)
    if kind == "gap":  # time nobody sampled: only the high bound grows
        r = replace(r, flop_low=0, flop_central=0, samples=0, covered_ns=0,
                    gap_ns=5 * SECOND, estimator="gap")
    return r


def write_node(state: Path, node: str, plan: list[list[tuple[int, RunRow, int, str]]],
               run_meta: dict[str, RunRow], declare: bool = False) -> Path:
    """A node's ledger: one checkpoint per item of ``plan``, each a list of
    ``(gpu, run, central FLOP, kind)``."""
    state.mkdir(parents=True, exist_ok=True)
    path = state / "ledger.sqlite"
    ledger = Ledger(path, node, load_or_create_key(state / "node.key"))
    t_s = 0.0
    for c, checkpoint in enumerate(plan):
        drafts = [_compute(node, gpu, t_s, run, central, kind)
                  for gpu, run, central, kind in checkpoint]
        if declare and c == 0:
            drafts.insert(1, make_statement(
                "declaration", node=node, time_ns=T0 + round(t_s * SECOND), run="pt",
                model="base", category="pre-training", payload={"plan": {"tokens": 10**12}}))
        t_s += 5
        ledger.append(drafts, T0 + round(t_s * SECOND), run_meta=run_meta)
    ledger.close()
    return path


def replicate(path: Path, url: str) -> None:
    rep = Replicator(path, lambda: connect(url), url=url)
    try:
        rep.run_until_caught_up()
    finally:
        rep.close()


def build_cluster(directory: Path, url: str) -> ClusterNodes:
    one = write_node(directory / "node-1", "node-1", [
        [(0, PT, 10**15, "interval"), (1, PT, 10**15, "interval"), (2, FT, 10**14, "interval")],
        [(0, PT, 2 * 10**15, "interval"), (1, PT, 10**15, "interval"),
         (2, FT, 3 * 10**14, "interval")],
        [(0, PT, 10**15, "interval"), (2, FT, 10**14, "interval")],
    ], {"pt": PT, "ft": FT}, declare=True)
    # node-2 declares nothing for pt: the merged metadata is node-1's fuller row.
    two = write_node(directory / "node-2", "node-2", [
        [(10, PT, 4 * 10**15, "interval"), (11, SOLO, 10**16, "interval")],
        [(10, PT, 10**15, "interval"), (11, SOLO, 10**16, "gap")],
        [(10, PT, 10**20, "interval")],  # a cluster total beyond 64 bits
    ], {"pt": replace(PT, meta={}), "solo": SOLO})
    for path in (one, two):
        replicate(path, url)
    return ClusterNodes(url, {"node-1": one, "node-2": two})
