"""One run over 512 nodes, end to end on a throwaway PostgreSQL: the cluster total is
exactly the node ledgers' sum, the run's cluster bundle proves every node complete, and
a node that withholds the end of its ledger is seen.

Builds ``nodes`` node ledgers of ``records`` records each (8 GPUs of one run, a signed
head every 8 records, the run closed at the end: :meth:`Ledger.close_run`), starts a
throwaway PostgreSQL (:mod:`benchmarks.pgserver`) and replicates them all from 8
streams. Then it states the run's cluster total as the store keeps it (what ``runs`` and
``show`` say) beside the sum of the node ledgers' own records, and whether the two are
exactly equal (integers); exports the run as a cluster bundle and verifies it (complete
on every node). Last, a second database where one node ships only its first batches
(its later records and its run-close never arrive): the cluster bundle and ``show`` say
that node's run is open while the others are complete, so the whole is not.

    python -m benchmarks.cluster_run512 [--nodes 512] [--records 240]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import multiprocessing
import resource
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from agent import figures
from agent.accounting.band import Band
from agent.cli.main import main as flopledger
from agent.ledger.cluster_bundle import (
    ClusterBundleReport,
    ClusterExport,
    export_cluster_bundle,
    verify_cluster_bundle,
)
from agent.ledger.pg_query import ClusterView, NodeRunCompleteness
from agent.ledger.pgconn import connect, ensure_schema
from agent.ledger.query import read_view
from agent.ledger.replicate import Replicator
from agent.ledger.signing import load_or_create_key
from agent.ledger.store import Ledger
from benchmarks.cluster_ingest import GPUS, RECORD_S, T0_NS, build_node
from benchmarks.pgserver import PgServer

RUN = "llama-70b-pretrain-2026-11"  # the run of benchmarks.cluster_ingest's records
PER_APPEND = 8
STREAMS = 8
# The withholding node ships this many batches of WITHHELD_BATCH records, then stops.
WITHHELD_STEPS = 2
WITHHELD_BATCH = 16


@dataclass(frozen=True)
class Figures:
    """A run's integer figures: FLOP band, energy and compute records."""

    flop: Band[int]
    energy_mj: int
    records: int

    def text(self) -> str:
        return (f"FLOP {self.flop.central} [{self.flop.low} .. {self.flop.high}] "
                f"({figures.band(self.flop.low, self.flop.central, self.flop.high)}), energy "
                f"{self.energy_mj} mJ, {self.records} records")


def build_closed_node(state: Path, node: str, records: int, per_append: int = PER_APPEND
                      ) -> Path:
    """:func:`benchmarks.cluster_ingest.build_node`, then the run closed on the node."""
    path = build_node(state, node, records, per_append)
    ledger = Ledger(path, node, load_or_create_key(state / "node.key"))
    try:
        ledger.close_run(RUN, T0_NS + (records // GPUS + 2) * RECORD_S * 10**9)
    finally:
        ledger.close()
    return path


def _build_one(job: tuple[Path, str, int, int]) -> Path:
    return build_closed_node(*job)


def build_cluster(base: Path, nodes: int, records: int, per_append: int = PER_APPEND,
                  processes: int | None = None) -> list[Path]:
    """``nodes`` closed ledgers under ``base`` (in parallel processes unless
    ``processes`` is 1)."""
    jobs = [(base / f"node-{i:04d}", f"node-{i:04d}", records, per_append)
            for i in range(nodes)]
    if processes == 1:
        return [_build_one(job) for job in jobs]
    with multiprocessing.get_context("spawn").Pool(processes) as pool:
        return pool.map(_build_one, jobs)


def replicate_all(url: str, ledgers: list[Path], streams: int = STREAMS, *,
                  withhold: Path | None = None) -> None:
    """Ship every ledger to the store at ``url`` from ``streams`` threads, each with its
    own connection; ``withhold`` ships only its first :data:`WITHHELD_STEPS` batches."""
    with connect(url) as conn:
        ensure_schema(conn)
    errors: list[BaseException] = []

    def stream(paths: list[Path]) -> None:
        try:
            with connect(url) as conn:
                for path in paths:
                    if path == withhold:
                        r = Replicator(path, lambda: conn, batch_records=WITHHELD_BATCH,
                                       url=url)
                        for _ in range(WITHHELD_STEPS):
                            r.step()
                    else:
                        Replicator(path, lambda: conn, url=url).run_until_caught_up()
        except BaseException as e:  # noqa: BLE001 - raised after the join
            errors.append(e)

    threads = [threading.Thread(target=stream, args=(ledgers[k::streams],))
               for k in range(streams) if ledgers[k::streams]]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def ledgers_sum(ledgers: list[Path]) -> Figures:
    """The run's figures summed over the node ledgers' own sealed records."""
    flop, energy, records = Band.exact(0), 0, 0
    for path in ledgers:
        s = read_view(path, run=RUN).summaries()[RUN]
        flop += s.flop
        energy += s.energy_mj
        records += s.records
    return Figures(flop, energy, records)


def store_total(url: str) -> Figures:
    """The run's cluster total as the store keeps it (``ClusterView.run_summaries``)."""
    with ClusterView(connect(url), url) as view:
        s = view.run_summaries()[RUN]
    return Figures(s.flop, s.energy_mj, s.records)


def export_and_verify(url: str, out: Path) -> tuple[ClusterExport, ClusterBundleReport,
                                                    float, float]:
    """The run's cluster bundle written to ``out`` and verified; with the seconds each
    took."""
    start = time.perf_counter()
    with ClusterView(connect(url), url) as view:
        done = export_cluster_bundle(view, out, run=RUN)
    exported = time.perf_counter()
    report = verify_cluster_bundle(out)
    return done, report, exported - start, time.perf_counter() - exported


def completeness(url: str) -> list[NodeRunCompleteness]:
    with ClusterView(connect(url), url) as view:
        return view.run_completeness(RUN)


def show_lines(url: str) -> tuple[int, list[str]]:
    """``flopledger show RUN --ledger URL``: its exit status and lines."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = flopledger(["show", RUN, "--ledger", url])
    return status, out.getvalue().splitlines()


@contextlib.contextmanager
def timed(seconds: dict[str, float], name: str) -> Iterator[None]:
    start = time.perf_counter()
    yield
    seconds[name] = time.perf_counter() - start


def run(nodes: int = 512, records: int = 240, say: Callable[[str], None] = print,
        processes: int | None = None) -> dict[str, object]:
    """The whole measurement; prints as it goes and returns what it found."""
    seconds: dict[str, float] = {}
    found: dict[str, object] = {}
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        with timed(seconds, "build"):
            ledgers = build_cluster(base / "nodes", nodes, records, processes=processes)
        say(f"build      {nodes} node ledgers x {records} records ({records // PER_APPEND} "
            f"signed heads each, run closed): {seconds['build']:.1f} s")
        server = PgServer()
        try:
            url = server.create_database("run512")
            with timed(seconds, "replicate"):
                replicate_all(url, ledgers)
            say(f"replicate  {nodes * (records + 1)} records from {STREAMS} streams: "
                f"{seconds['replicate']:.1f} s")
            store, summed = store_total(url), ledgers_sum(ledgers)
            exact = store == summed
            found.update(store=store, summed=summed, exact=exact)
            say(f"store      {store.text()}")
            say(f"ledgers    {summed.text()}")
            say(f"equal      {'EXACTLY (integers)' if exact else 'NO: they differ'}")

            done, report, export_s, verify_s = export_and_verify(url, base / "run.json")
            seconds.update(export=export_s, verify=verify_s)
            size_mb = (base / "run.json").stat().st_size / 1e6
            complete = sum(1 for n in report.nodes if n.report.complete is True)
            found.update(export=done, report=report)
            say(f"export     cluster bundle of {len(done.nodes)} node(s), {done.records} "
                f"records, {done.statements} statements, {size_mb:.0f} MB: {export_s:.1f} s")
            say(f"verify     {'OK' if report.ok else 'FAILED'}; complete on {complete} of "
                f"{len(report.nodes)} node(s); bundle totals = store total: "
                f"{_bundle_figures(report) == store}: {verify_s:.1f} s")
            say(f"           {report.completeness_line()}")

            withheld = ledgers[nodes // 3]
            url2 = server.create_database("withheld")
            with timed(seconds, "replicate_withheld"):
                replicate_all(url2, ledgers, withhold=withheld)
            say(f"withhold   second database, {withheld.parent.name} ships only its first "
                f"{WITHHELD_STEPS * WITHHELD_BATCH} records (its later records and its "
                f"run-close never arrive): {seconds['replicate_withheld']:.1f} s")
            _, report2, export2_s, verify2_s = export_and_verify(url2, base / "w.json")
            found.update(withheld=withheld.parent.name, report_withheld=report2,
                         completeness_withheld=completeness(url2))
            say(f"bundle     {'OK' if report2.ok else 'FAILED'} (signatures, proofs, totals); "
                f"{report2.completeness_line()} ({export2_s:.1f} s + {verify2_s:.1f} s)")
            for node in report2.nodes:
                if node.report.complete is not True:
                    for line in node.report.completeness:
                        say(f"           {line}")
            status, lines = show_lines(url2)
            found.update(show_status=status, show_lines=lines)
            for line in lines:
                if line.startswith("complete  ") or (
                        withheld.parent.name in line and "key " in line
                        and ": " in line and line.startswith("  key ")):
                    say(f"show       {line.strip()}")
        finally:
            server.destroy()
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    say(f"timings    build {seconds['build']:.1f} s, replicate {seconds['replicate']:.1f} s, "
        f"export {seconds['export']:.1f} s, verify {seconds['verify']:.1f} s; peak memory "
        f"of this process {peak_mb:.0f} MB")
    found["seconds"] = seconds
    return found


def _bundle_figures(report: ClusterBundleReport) -> Figures:
    t = report.totals
    return Figures(Band(t["flop_low"], t["flop_central"], t["flop_high"]), t["energy_mj"],
                   t["records"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=512)
    parser.add_argument("--records", type=int, default=240, help="records per node")
    args = parser.parse_args()
    found = run(args.nodes, args.records)
    ok = (found["exact"] and isinstance(found["report"], ClusterBundleReport)
          and found["report"].complete is True)
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
