"""Run and model names chosen to hurt: path traversal and ``/`` where a name becomes a
file, a newline where it becomes a line of output, and the reserved ``unattributed``
claimed by a job, a static rule, a replay mapping or a replayed label."""

from __future__ import annotations

from pathlib import Path

from agent.accounting.names import file_stem
from tests.hostile.harness import Case

LEDGER = "ledger.sqlite"
DOTDOT = "../../etc/x"
SLASH = "team/a"
NEWLINE = "evil\nFORGED line"
MODEL_DOTDOT = "../models/m"
RUNS = (DOTDOT, SLASH, NEWLINE, "plain-run")


def _ledger(directory: Path) -> None:
    """A signed ledger whose runs are called :data:`RUNS` (and one whose model is
    :data:`MODEL_DOTDOT`), as a replayed label or an older agent could have written."""
    from agent.ledger.signing import load_or_create_key
    from agent.ledger.store import Ledger, RunRow
    from tests.ledger_helpers import SECOND, T0, record

    ledger = Ledger(directory / LEDGER, "node-1", load_or_create_key(directory / "node.key"))
    drafts = [record(i, 0, 5, run=run, model="m") for i, run in enumerate(RUNS)]
    drafts.append(record(len(RUNS), 0, 5, run="mrun", model=MODEL_DOTDOT))
    rows = {r.run: RunRow(r.run, r.model, "pre-training", {}) for r in drafts}
    ledger.append(drafts, T0 + 5 * SECOND, rows)
    ledger.close()


def _bundle(kind: str, name: str) -> str:
    return f"flopledger-{kind}-{file_stem(name)}.json"


def _png(kind: str, name: str) -> str:
    return f"flopledger-{kind}-{file_stem(name)}.png"


def _ledger_case(name: str, argv: tuple[str, ...], exit_code: int, message: str,
                 may_change: tuple[str, ...] = ()) -> Case:
    return Case(name, (*argv, "--ledger", f"{{dir}}/{LEDGER}"), exit_code, message,
                setup=_ledger, may_change=may_change, ledger=LEDGER)


def _scrape(run_label: str) -> str:
    """Six dcgm-exporter scrapes of one H100 whose series carry ``run="<run_label>"``
    (exposition-format escaped)."""
    labels = ('gpu="0",UUID="GPU-11111111-2222-3333-4444-555555555555",'
              f'modelName="NVIDIA H100 80GB HBM3",Hostname="n",run="{run_label}"')
    lines = []
    for k in range(6):
        lines += [f"# scrape {1_750_000_000 + 15 * k}.000000000",
                  f"DCGM_FI_DEV_SM_CLOCK{{{labels}}} 1980",
                  f"DCGM_FI_DEV_GPU_UTIL{{{labels}}} 97",
                  f"DCGM_FI_PROF_PIPE_TENSOR_ACTIVE{{{labels}}} 0.5"]
    return "\n".join(lines) + "\n"


def _agent(env: str) -> dict[str, str]:
    """A short simulated agent run whose one job has the environment ``env`` (TOML)."""
    return {"agent.toml": (
        '[agent]\nsource = "simulated"\nexit_after_s = 10\nstate_dir = "var"\n'
        'listen = "127.0.0.1:0"\n[sim]\ngpus = 2\nvirtual_time = true\ntime_scale = 0\n'
        f'[[sim.jobs]]\nenv = {env}\ngpus = [0]\n')}


_RULE = '[[attribution.rules]]\nrun = "{run}"\ncategory = "evaluation"\ngpus = [0]\n'
_REPLAY_OUT = ("l.sqlite", "l.sqlite.head", "l.sqlite.key", "l.sqlite.pub")

CASES = [
    # A name becomes a file: the default file stays in the current directory.
    _ledger_case("export-run-dotdot", ("export", "--run", DOTDOT), 0, "wrote flopledger-run-",
                 (_bundle("run", DOTDOT),)),
    _ledger_case("export-run-slash", ("export", "--run", SLASH), 0,
                 f"wrote {_bundle('run', SLASH)}", (_bundle("run", SLASH),)),
    _ledger_case("export-run-newline", ("export", "--run", NEWLINE), 0,
                 f"wrote {_bundle('run', NEWLINE)}", (_bundle("run", NEWLINE),)),
    _ledger_case("export-model-dotdot", ("export", "--model", MODEL_DOTDOT), 0,
                 f"wrote {_bundle('model', MODEL_DOTDOT)}", (_bundle("model", MODEL_DOTDOT),)),
    _ledger_case("export-run-dotdot-absent", ("export", "--run", "../../etc/passwd"), 1,
                 "no record for run ../../etc/passwd"),
    _ledger_case("report-png-dotdot", ("report", "--run", DOTDOT, "--format", "png"), 0,
                 f"wrote {_png('run', DOTDOT)}", (_png("run", DOTDOT),)),
    _ledger_case("report-png-slash", ("report", "--run", SLASH, "--format", "png"), 0,
                 f"wrote {_png('run', SLASH)}", (_png("run", SLASH),)),
    _ledger_case("report-png-newline", ("report", "--run", NEWLINE, "--format", "png"), 0,
                 f"wrote {_png('run', NEWLINE)}", (_png("run", NEWLINE),)),
    # A form comes as Markdown or JSON only: refused before anything is written.
    _ledger_case("report-form-as-csv", ("report", "--run", DOTDOT, "--form",
                                        "eu-notification", "--format", "csv"), 2,
                 "--form gives --format md or json, not csv"),
    # A name becomes a line of output: escaped, so it cannot forge another.
    _ledger_case("runs-newline", ("runs",), 0, "evil\\nFORGED line"),
    _ledger_case("show-newline", ("show", NEWLINE), 0, "run       evil\\nFORGED line"),
    _ledger_case("show-dotdot-names-a-safe-bundle", ("show", DOTDOT), 0,
                 f"flopledger verify {_bundle('run', DOTDOT)}"),
    # The reserved run id cannot be claimed: not by a static rule, a replay mapping, ...
    Case("run-rule-claims-unattributed", ("run", "--config", "{dir}/agent.toml"), 2,
         "attribution.rules[0].run", files={"agent.toml": _RULE.format(run="unattributed")}),
    Case("run-rule-run-id-with-newline", ("run", "--config", "{dir}/agent.toml"), 2,
         "control character \\n", files={"agent.toml": _RULE.format(run="a\\nb")}),
    Case("replay-mapping-claims-unattributed",
         ("replay", "--ledger", "{dir}/l.sqlite", "--mapping", "{dir}/map.toml",
          "{dir}/dcgm.prom"), 2, "runs.unattributed",
         files={"map.toml": '[runs.unattributed]\ncategory = "evaluation"\n',
                "dcgm.prom": _scrape("ok")}),
    # ... nor by a replayed label or a job's environment: that compute stays unattributed.
    Case("replay-label-run-with-newline",
         ("replay", "--ledger", "{dir}/l.sqlite", "{dir}/dcgm.prom"), 0, "claims nothing",
         files={"dcgm.prom": _scrape("evil\\nFORGED")}, may_change=_REPLAY_OUT,
         ledger="l.sqlite"),
    Case("agent-job-claims-unattributed", ("run", "--config", "{dir}/agent.toml"), 0,
         "is reserved for compute no run claims",
         files=_agent('{ FLOPLEDGER_RUN_ID = "unattributed", FLOPLEDGER_CATEGORY = '
                      '"evaluation" }'),
         may_change=("var",), ledger="var/ledger.sqlite"),
    Case("agent-job-empty-run-id", ("run", "--config", "{dir}/agent.toml"), 0,
         "run id '' is empty",
         files=_agent('{ FLOPLEDGER_RUN_ID = "", SLURM_JOB_ID = "77" }'),
         may_change=("var",), ledger="var/ledger.sqlite"),
]
