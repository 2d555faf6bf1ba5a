"""``attest`` and ``gate`` on bad input: arguments that break the name, result, evidence
and wait rules, policies that are not policies, evidence that fails verification. Each
ends in its exit code and one line, and the ledger is left as it was (nothing is
attested or decided on bad input)."""

from __future__ import annotations

import json
from pathlib import Path

from tests.hostile.harness import Case, Setup

STATE = "state"
LEDGER_PATH = "{dir}/state/ledger.sqlite"
# A read-only open of a WAL ledger may leave its side files; the ledger is unchanged.
SIDE_FILES = ("state/ledger.sqlite-shm", "state/ledger.sqlite-wal")
GOOD = ("--evaluation", "red-team", "--result", "pass", "--evidence", "https://e.example/1")
POLICY_OK = """
[[tiers]]
name = "top"
regime = "eu-art51-systemic-risk"
modes = ["structured-access", "internal"]
[default]
modes = ["open-weights", "staged", "structured-access", "internal"]
"""


def _ledger(directory: Path) -> None:
    from tests.compliance.test_gate import write_ledger

    (directory / STATE).mkdir()
    write_ledger(directory / STATE / "ledger.sqlite")


def _damaged(directory: Path) -> None:
    from tests.ledger.damage import FAULTS

    _ledger(directory)
    FAULTS["totals-edited"][0](directory / STATE)


def _keyless(directory: Path) -> None:
    _ledger(directory)
    (directory / STATE / "node.key").unlink()


def _bundle(*, run: str | None = None, model: str | None = None,
            tamper: bool = False) -> Setup:
    def setup(directory: Path) -> None:
        from agent.ledger.bundle import export_bundle

        _ledger(directory)
        out = directory / "bundle.json"
        export_bundle(directory / STATE / "ledger.sqlite", out, run=run, model=model)
        if tamper:
            doc = json.loads(out.read_text())
            doc["records"][0]["body"] = doc["records"][0]["body"].replace(
                '"flop_central":5', '"flop_central":6')
            out.write_text(json.dumps(doc))

    return setup


def _attest(name: str, replace: tuple[str, str] | None, message: str, *extra: str,
            model: str = "medium", exit_code: int = 2) -> Case:
    argv = list(GOOD)
    if replace is not None:
        flag, value = replace
        argv[argv.index(flag) + 1] = value
    return Case(name, ("attest", model, *argv, *extra, "--ledger", LEDGER_PATH), exit_code,
                message, setup=_ledger, may_change=SIDE_FILES, ledger="state/ledger.sqlite")


def _gate(name: str, argv: tuple[str, ...], exit_code: int, message: str,
          files: dict[str, str | bytes] | None = None, setup: Setup | None = _ledger) -> Case:
    # A damaged ledger's totals are wrong by design: only a sound one is held to them.
    return Case(name, ("gate", *argv), exit_code, message, files=files or {},
                setup=setup, may_change=SIDE_FILES,
                ledger=None if setup is _damaged else "state/ledger.sqlite")


def _policy(text: str | bytes) -> dict[str, str | bytes]:
    return {"policy.toml": text}


POLICY = ("--policy", "{dir}/policy.toml", "--ledger", LEDGER_PATH)

CASES = [
    _attest("attest-score-nan", ("--result", "score=nan"),
            "expected score=X with X a finite number"),
    _attest("attest-score-inf", ("--result", "score=-inf"),
            "expected score=X with X a finite number"),
    _attest("attest-result-word", ("--result", "passed"), "expected pass, fail or score=X"),
    _attest("attest-evidence-relative", ("--evidence", "evals/1.json"),
            "is neither a URI with a scheme"),
    _attest("attest-evidence-newline", ("--evidence", "https://e/1\nFORGED"),
            "holds a control character or a line break"),
    _attest("attest-evaluation-escape", ("--evaluation", "red\x1b[31mteam"),
            "holds the control character \\x1b"),
    _attest("attest-model-too-long", None, "is longer than 200 characters", model="m" * 201),
    _attest("attest-model-blank", None, "is empty", model=""),
    _attest("attest-model-reserved", None, "is reserved for compute no run claims",
            model="Unattributed"),
    _attest("attest-by-newline", None, "holds the control character \\n", "--by", "eve\nadmin"),
    _attest("attest-wait-nan", None, "expected a number of seconds", "--wait", "nan"),
    Case("attest-no-ledger", ("attest", "medium", *GOOD, "--ledger", "{dir}/none.sqlite"), 1,
         "no ledger at"),
    Case("attest-damaged-ledger", ("attest", "medium", *GOOD, "--ledger", LEDGER_PATH), 1,
         "fails its consistency checks", setup=_damaged, may_change=SIDE_FILES),
    Case("attest-no-node-key", ("attest", "medium", *GOOD, "--ledger", LEDGER_PATH), 1,
         "node key", setup=_keyless, may_change=SIDE_FILES, ledger="state/ledger.sqlite"),
    _gate("gate-no-node-key", ("medium", "--mode", "staged", "--ledger", LEDGER_PATH), 1,
          "the decision could not be recorded", setup=_keyless),
    _gate("gate-unknown-mode", ("medium", "--mode", "public", "--ledger", LEDGER_PATH), 2,
          "invalid choice: 'public'"),
    _gate("gate-policy-missing", ("medium", "--mode", "staged", *POLICY), 2,
          "a release policy in TOML (not found)"),
    _gate("gate-policy-not-toml", ("medium", "--mode", "staged", *POLICY), 2, "valid TOML",
          files=_policy("[[tiers]\n")),
    _gate("gate-policy-not-utf8", ("medium", "--mode", "staged", *POLICY), 2,
          "valid TOML in UTF-8", files=_policy(b"\xff\xfe\x00")),
    _gate("gate-policy-unknown-regime", ("medium", "--mode", "staged", *POLICY), 2,
          "tiers[0].regime: expected one of the regimes of",
          files=_policy(POLICY_OK.replace("eu-art51-systemic-risk", "eu-art99"))),
    _gate("gate-policy-unknown-mode", ("medium", "--mode", "staged", *POLICY), 2,
          "tiers[0].modes: expected a non-empty list of release modes",
          files=_policy(POLICY_OK.replace('"structured-access", "internal"]',
                                          '"structured", "internal"]', 1))),
    _gate("gate-policy-evaluations-for-a-mode-not-allowed",
          ("medium", "--mode", "staged", *POLICY), 2,
          "tiers[0].evaluations.open-weights: expected a mode this tier allows",
          files=_policy(POLICY_OK.replace("[default]",
                                          '[tiers.evaluations]\nopen-weights = ["x"]\n'
                                          "[default]"))),
    _gate("gate-policy-no-default", ("medium", "--mode", "staged", *POLICY), 2,
          "default: expected a [default] table",
          files=_policy(POLICY_OK.split("[default]")[0])),
    _gate("gate-policy-min-flop-nan", ("medium", "--mode", "staged", *POLICY), 2,
          "tiers[0].min_flop: expected a finite number",
          files=_policy(POLICY_OK.replace('regime = "eu-art51-systemic-risk"',
                                          'min_flop = nan\nscope = "cumulative"'))),
    _gate("gate-thresholds-bad", ("medium", "--mode", "staged", "--config",
                                  "{dir}/agent.toml", "--ledger", LEDGER_PATH), 2,
          "configuration error in",
          files={"agent.toml": '[agent]\nthresholds_file = "{dir}/thresholds.toml"\n',
                 "thresholds.toml": "[scopes\n"}),
    _gate("gate-model-newline", ("evil\nmodel", "--mode", "staged", "--ledger", LEDGER_PATH),
          2, "model 'evil\\\\nmodel' holds the control character"),
    _gate("gate-wait-negative", ("medium", "--mode", "staged", "--wait", "-5", "--ledger",
                                 LEDGER_PATH), 2, "--wait -5.0: expected a number of seconds"),
    _gate("gate-ledger-and-bundle", ("medium", "--mode", "staged", "--ledger", LEDGER_PATH,
                                     "--bundle", "{dir}/bundle.json"), 2,
          "give --ledger or --bundle, not both"),
    _gate("gate-no-ledger", ("medium", "--mode", "staged", "--ledger", "{dir}/none.sqlite"),
          1, "none.sqlite: no such ledger file", setup=None),
    _gate("gate-damaged-ledger", ("medium", "--mode", "staged", "--ledger", LEDGER_PATH), 1,
          "fails verification: totals", setup=_damaged),
    _gate("gate-wrong-key", ("medium", "--mode", "staged", "--ledger", LEDGER_PATH,
                             "--key-fingerprint", "0000000000000000"), 1,
          "expected 0000000000000000"),
    _gate("gate-bundle-tampered", ("medium", "--mode", "staged", "--bundle",
                                   "{dir}/bundle.json"), 1,
          "not in the signed ledger at that position",
          setup=_bundle(model="medium", tamper=True)),
    _gate("gate-bundle-not-json", ("medium", "--mode", "staged", "--bundle",
                                   "{dir}/bundle.json"), 1,
          "unreadable or malformed bundle", files={"bundle.json": "{not json"}, setup=None),
    _gate("gate-bundle-of-a-run", ("medium", "--mode", "staged", "--bundle",
                                   "{dir}/bundle.json"), 2,
          "is of run medium-pt, not of model medium", setup=_bundle(run="medium-pt")),
]
