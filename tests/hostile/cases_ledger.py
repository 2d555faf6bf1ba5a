"""Damaged ledgers (issue 10 part A): the ledger never silently loses or rewrites history.

Every fault of :data:`tests.ledger.damage.FAULTS`, met by the commands an operator would
run on it: ``verify`` names it and exits 1; ``run`` refuses to start (exit 2, "refusing
to start", how to recover) and writes nothing, not even its lock file; ``runs``,
``show`` and ``report`` put a WARNING at the top, show what they can and exit 1, or
say in one line that the file cannot be read. ``recover`` refuses a sound ledger
(exit 1) or one an agent holds (exit 2) and otherwise sets the files aside.

The harness cannot hold a lock with ``close()``; :class:`_HeldLock` adapts one (a setup
helper kept here, as the harness is not this area's).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from agent.ledger import lock
from tests.hostile.harness import Case
from tests.ledger.damage import FAULTS, sound_state

STATE = "state"
LEDGER_PATH = "{dir}/state/ledger.sqlite"
CONFIG = ('[agent]\nstate_dir = "{dir}/state"\nnode = "node-1"\nsource = "simulated"\n'
          "[sim]\ngpus = 2\n")
RUN = ("run", "--config", "{dir}/agent.toml", "--listen", "127.0.0.1:0")


def damaged(fault: str) -> Callable[[Path], object]:
    def setup(directory: Path) -> None:
        sound_state(directory / STATE)
        FAULTS[fault][0](directory / STATE)

    return setup


def sound(directory: Path) -> None:
    sound_state(directory / STATE)


def garbage_without_head(directory: Path) -> None:
    sound_state(directory / STATE)
    (directory / STATE / "ledger.sqlite.head").unlink()
    FAULTS["not-a-database"][0](directory / STATE)


class _HeldLock:
    """The state directory's lock, held by the test process while the case runs."""

    def __init__(self, directory: Path) -> None:
        FAULTS["totals-edited"][0](sound_state(directory / STATE).parent)
        self.held = lock.acquire(directory / STATE)

    def close(self) -> None:
        self.held.release()


# Faults whose file can still be read as a ledger by runs/show/report.
READABLE = ("rolled-back", "wal-deleted", "totals-edited", "record-edited", "body-text",
            "body-garbage", "body-wrong-types", "open-text", "runs-meta", "table-dropped",
            "head-forged", "open-records-lost")
# Faults that leave no readable ledger at all.
UNREADABLE = {"truncated": "not a readable ledger", "not-a-database": "not a readable ledger",
              "deleted": "no ledger at"}

CASES: list[Case] = []
for _fault in sorted(FAULTS):
    _said = FAULTS[_fault][1]
    CASES += [
        Case(f"verify-{_fault}", ("verify", LEDGER_PATH), 1, _said, setup=damaged(_fault)),
        Case(f"run-{_fault}", RUN, 2, "refusing to start", files={"agent.toml": CONFIG},
             setup=damaged(_fault)),
    ]
for _fault in READABLE:
    _said = FAULTS[_fault][1]
    CASES += [
        Case(f"runs-{_fault}", ("runs", "--ledger", LEDGER_PATH), 1, "WARNING: ",
             setup=damaged(_fault)),
        Case(f"show-{_fault}", ("show", "a", "--ledger", LEDGER_PATH), 1, "WARNING: ",
             setup=damaged(_fault)),
        Case(f"report-{_fault}", ("report", "--run", "a", "--ledger", LEDGER_PATH), 1,
             "WARNING: ", setup=damaged(_fault)),
    ]
for _fault, _said in UNREADABLE.items():
    CASES += [
        Case(f"runs-{_fault}", ("runs", "--ledger", LEDGER_PATH), 1, _said,
             setup=damaged(_fault)),
        Case(f"show-{_fault}", ("show", "a", "--ledger", LEDGER_PATH), 1, _said,
             setup=damaged(_fault)),
        Case(f"report-{_fault}", ("report", "--run", "a", "--ledger", LEDGER_PATH), 1, _said,
             setup=damaged(_fault)),
    ]
CASES += [
    Case("run-says-the-first-problem", RUN, 2, "totals for gpu GPU-00000000",
         files={"agent.toml": CONFIG}, setup=damaged("totals-edited")),
    Case("run-says-how-to-recover", RUN, 2, "flopledger recover --ledger",
         files={"agent.toml": CONFIG}, setup=damaged("wal-deleted")),
    Case("export-damaged", ("export", "--run", "a", "--ledger", LEDGER_PATH, "-o",
                            "{dir}/bundle.json"), 1, "fails its consistency checks",
         setup=damaged("body-text")),
    Case("recover-sound", ("recover", "--ledger", LEDGER_PATH), 1,
         "passes its consistency checks", setup=sound),
    Case("recover-missing", ("recover", "--ledger", "{dir}/state/none.sqlite"), 1,
         "no node key", setup=None),
    Case("recover-while-an-agent-runs", ("recover", "--ledger", LEDGER_PATH), 2, "held by PID",
         setup=_HeldLock),
    Case("recover-damaged", ("recover", "--ledger", LEDGER_PATH), 0,
         "record 0 states the discontinuity", setup=damaged("body-text"),
         may_change=(STATE,), ledger="state/ledger.sqlite"),
    Case("recover-nothing-to-carry", ("recover", "--ledger", LEDGER_PATH), 1,
         "--accept-loss", setup=garbage_without_head),
]
