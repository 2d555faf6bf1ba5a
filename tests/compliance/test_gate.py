"""The release gate: policies, tiers, attestations and decisions, on real ledgers.

Ledgers are written with the agent's own writer (:class:`agent.ledger.store.Ledger`),
with chosen FLOP per model and attestations as signed statements; the decision is the
one ``flopledger gate`` makes (:func:`gate_on`), and the command itself is run where the
decision is recorded, exported or verified.
"""

from __future__ import annotations

import hashlib
import json
import tomllib
import uuid
from collections.abc import Sequence
from pathlib import Path

import pytest

from agent.accounting.records import LedgerRecord, make_statement
from agent.cli.main import main
from agent.compliance.attestations import (
    attestation_payload,
    evidence_problem,
    latest_attestations,
    parse_result,
)
from agent.compliance.gate import (
    EXIT_ALLOWED,
    EXIT_EVALUATIONS,
    EXIT_NOT_ALLOWED,
    Decision,
    Policy,
    decide,
    load_policy,
    model_figures,
)
from agent.compliance.lineage import Flop, ModelInfo
from agent.compliance.thresholds import Registry, load_registry
from agent.configfile import ConfigError
from agent.ledger.query import read_view, statements
from agent.ledger.signing import load_or_create_key
from agent.ledger.store import Ledger, RunRow
from tests.paths import REPO

SECOND = 1_000_000_000
T0 = 1_750_000_000 * SECOND

# Tiers: "top" through the EU systemic-risk regime (1e25, cumulative, inherits), "mid"
# through its own floor of 1e23 FLOP of parameter updates; the default allows all.
POLICY = """
estimate = "high"

[[tiers]]
name = "top"
regime = "eu-art51-systemic-risk"
modes = ["structured-access", "internal"]
evaluations = ["red-team"]

[[tiers]]
name = "mid"
min_flop = 1e23
scope = "parameter-update"
modes = ["staged", "structured-access", "internal"]
[tiers.evaluations]
staged = ["red-team", "refusal"]

[default]
name = "small"
modes = ["open-weights", "staged", "structured-access", "internal"]

[evaluations.refusal]
min_score = 0.9
"""

# (model, run, category, central FLOP)
RUNS = [("big", "big-pt", "pre-training", 2 * 10**25),
        ("medium", "medium-pt", "pre-training", 5 * 10**23),
        ("small", "small-pt", "pre-training", 10**20)]

Attest = tuple[str, str, str]  # (model, evaluation, --result)


def compute(gpu: int, run: str, model: str, category: str, central: int, *,
            low: int | None = None, high: int | None = None, start_s: int = 0) -> LedgerRecord:
    """One interval record of one GPU, with a chosen band (default -5% / +5%)."""
    return LedgerRecord(
        seq=-1, kind="interval", node="node-1", run=run, model=model, category=category,
        gpu_uuid=f"GPU-{gpu:08d}", gpu_index=gpu, start_ns=T0 + start_s * SECOND,
        end_ns=T0 + (start_s + 60) * SECOND,
        flop_low=central * 95 // 100 if low is None else low, flop_central=central,
        flop_high=central * 105 // 100 if high is None else high, energy_mj=1000,
        samples=60, covered_ns=60 * SECOND, gap_ns=0, estimator="gpm_tensor",
        assumptions={"precision": "bf16", "split": "single"})


def attestation(model: str, evaluation: str, result_text: str, time_ns: int) -> LedgerRecord:
    result, score = parse_result(result_text)
    payload = attestation_payload(evaluation=evaluation, result=result, score=score,
                                  evidence=f"https://evals.example/{evaluation}", by="alice",
                                  time_ns=time_ns, message_id=uuid.uuid4().hex)
    return make_statement("attestation", node="node-1", time_ns=time_ns, model=model,
                          payload=payload)


def write_ledger(path: Path, runs: Sequence[tuple[str, str, str, int]] = RUNS,
                 attestations: Sequence[Attest] = (),
                 meta: dict[str, dict[str, object]] | None = None,
                 still_open: Sequence[LedgerRecord] = ()) -> Path:
    """A ledger holding one record per run (each on its own GPU), then each attestation
    under a head of its own, in order; ``still_open``: records of the current windows."""
    ledger = Ledger(path, "node-1", load_or_create_key(path.parent / "node.key"))
    rows = {run: RunRow(run, model, category, dict((meta or {}).get(run, {})))
            for model, run, category, _ in runs}
    ledger.append([compute(k, run, model, category, central)
                   for k, (model, run, category, central) in enumerate(runs)],
                  T0 + 60 * SECOND, rows, still_open=list(still_open))
    for k, (model, evaluation, result) in enumerate(attestations):
        at = T0 + (120 + k) * SECOND
        ledger.append([attestation(model, evaluation, result, at)], at)
    ledger.close()
    return path


def policy_of(text: str, tmp_path: Path, registry: Registry) -> Policy:
    path = tmp_path / "release.toml"
    path.write_text(text)
    return load_policy(path, registry)


def gate_on(path: Path, model: str, mode: str, policy: Policy, *,
            models: dict[str, ModelInfo] | None = None,
            allow_unmeasured: bool = False) -> Decision:
    """The decision ``flopledger gate`` makes on a ledger."""
    registry = load_registry()
    view = read_view(path)
    fig = model_figures(model, view.sealed, view.unsealed, view.run_meta, models or {},
                        registry)
    attested = latest_attestations([s for s in view.statements if s.model == model], model)
    return decide(policy, registry, fig, mode, attested, allow_unmeasured=allow_unmeasured)


def cli(*args: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    capsys.readouterr()
    status = main(list(args))
    out, err = capsys.readouterr()
    return status, out, err


# (id, model, mode, attestations, exit code, {evaluation: status} of the requested mode,
#  the mode suggested instead)
TABLE: list[tuple[str, str, str, list[Attest], int, dict[str, str], str | None]] = [
    ("small-open", "small", "open-weights", [], EXIT_ALLOWED, {}, None),
    ("small-internal", "small", "internal", [], EXIT_ALLOWED, {}, None),
    ("mid-open-not-allowed", "medium", "open-weights", [], EXIT_NOT_ALLOWED, {}, "staged"),
    ("mid-staged-missing", "medium", "staged", [], EXIT_EVALUATIONS,
     {"red-team": "missing", "refusal": "missing"}, None),
    ("mid-staged-passes", "medium", "staged",
     [("medium", "red-team", "pass"), ("medium", "refusal", "score=0.95")], EXIT_ALLOWED,
     {"red-team": "passes", "refusal": "passes"}, None),
    ("mid-staged-at-min-score", "medium", "staged",
     [("medium", "red-team", "pass"), ("medium", "refusal", "score=0.9")], EXIT_ALLOWED,
     {"red-team": "passes", "refusal": "passes"}, None),
    ("mid-staged-below-min", "medium", "staged",
     [("medium", "red-team", "pass"), ("medium", "refusal", "score=0.85")], EXIT_EVALUATIONS,
     {"red-team": "passes", "refusal": "below-min"}, None),
    ("mid-staged-bare-pass-needs-score", "medium", "staged",
     [("medium", "red-team", "pass"), ("medium", "refusal", "pass")], EXIT_EVALUATIONS,
     {"red-team": "passes", "refusal": "no-score"}, None),
    ("mid-staged-failed", "medium", "staged",
     [("medium", "red-team", "fail"), ("medium", "refusal", "score=0.95")], EXIT_EVALUATIONS,
     {"red-team": "failed", "refusal": "passes"}, None),
    ("mid-latest-pass-wins", "medium", "staged",
     [("medium", "red-team", "fail"), ("medium", "refusal", "score=0.95"),
      ("medium", "red-team", "pass")], EXIT_ALLOWED,
     {"red-team": "passes", "refusal": "passes"}, None),
    ("mid-latest-fail-wins", "medium", "staged",
     [("medium", "red-team", "pass"), ("medium", "refusal", "score=0.95"),
      ("medium", "red-team", "fail")], EXIT_EVALUATIONS,
     {"red-team": "failed", "refusal": "passes"}, None),
    ("mid-latest-score-wins", "medium", "staged",
     [("medium", "red-team", "pass"), ("medium", "refusal", "score=0.95"),
      ("medium", "refusal", "score=0.5")], EXIT_EVALUATIONS,
     {"red-team": "passes", "refusal": "below-min"}, None),
    ("mid-other-models-attestations", "medium", "staged",
     [("big", "red-team", "pass"), ("big", "refusal", "score=0.99")], EXIT_EVALUATIONS,
     {"red-team": "missing", "refusal": "missing"}, None),
    ("mid-structured-needs-nothing", "medium", "structured-access", [], EXIT_ALLOWED, {}, None),
    ("top-open-not-allowed", "big", "open-weights", [], EXIT_NOT_ALLOWED, {},
     "structured-access"),
    ("top-staged-not-allowed", "big", "staged", [("big", "red-team", "pass")],
     EXIT_NOT_ALLOWED, {}, "structured-access"),
    ("top-structured-missing", "big", "structured-access", [], EXIT_EVALUATIONS,
     {"red-team": "missing"}, None),
    ("top-structured-passes", "big", "structured-access", [("big", "red-team", "pass")],
     EXIT_ALLOWED, {"red-team": "passes"}, None),
    ("top-internal-failed", "big", "internal", [("big", "red-team", "fail")],
     EXIT_EVALUATIONS, {"red-team": "failed"}, None),
]


@pytest.mark.parametrize(("model", "mode", "attestations", "exit_code", "statuses",
                          "suggested"), [row[1:] for row in TABLE], ids=[row[0] for row in TABLE])
def test_decision_table(tmp_path: Path, model: str, mode: str, attestations: list[Attest],
                        exit_code: int, statuses: dict[str, str],
                        suggested: str | None) -> None:
    path = write_ledger(tmp_path / "ledger.sqlite", attestations=attestations)
    policy = policy_of(POLICY, tmp_path, load_registry())
    d = gate_on(path, model, mode, policy)
    assert d.exit_code == exit_code, d.lines()
    assert {f.evaluation: f.status for f in d.findings} == statuses
    assert d.suggested_mode == suggested
    expected_tier = {"big": "top", "medium": "mid", "small": "small"}[model]
    assert d.tier.name == expected_tier
    if exit_code == EXIT_NOT_ALLOWED:
        # The suggestion comes with what that mode needs, judged on the attestations.
        assert f"the least restricted allowed mode is {suggested}" in d.headline
        assert [f.evaluation for f in d.suggested] == list(d.tier.required(str(suggested)))
    if exit_code == EXIT_EVALUATIONS:
        for evaluation, status in statuses.items():
            if status != "passes":
                assert evaluation in d.headline


def test_the_justification_names_tier_threshold_band_and_end_used(tmp_path: Path) -> None:
    path = write_ledger(tmp_path / "ledger.sqlite",
                        attestations=[("big", "red-team", "pass")])
    d = gate_on(path, "big", "open-weights", policy_of(POLICY, tmp_path, load_registry()))
    text = "\n".join(d.lines())
    assert "tier      top: the first tier the model reaches" in text
    assert ("          top: reached: EU AI Act Art. 51(2): presumed high-impact capabilities "
            "(systemic risk) (eu-art51-systemic-risk), threshold 1.0e+25 FLOP (at or above) "
            "in scope cumulative; the model's total 2.0e+25 [1.9e+25 .. 2.1e+25] (central "
            "[low .. high]), high end 2.1e+25 used") in text
    assert "attested  red-team: pass by alice, evidence https://evals.example/red-team, record 3" \
        in text
    assert "decision  NOT ALLOWED (exit 3): mode open-weights is not allowed for tier top" in text
    doc = d.to_json()
    json.dumps(doc)  # one JSON object
    top = doc["checks"][0]
    assert (top["tier"], top["reached"], top["threshold_flop"], top["scope"]) == \
        ("top", True, 1e25, "cumulative")
    assert top["total"] == {"low": 1.9e25, "central": 2e25, "high": 2.1e25}
    assert doc["attestations"][0]["record"] == 3


def test_a_total_exactly_at_the_threshold_reaches_the_tier(tmp_path: Path) -> None:
    # The regime itself says "strictly greater"; the gate errs toward the more restricted
    # tier, so a figure at the threshold is in it.
    path = tmp_path / "ledger.sqlite"
    ledger = Ledger(path, "node-1", load_or_create_key(tmp_path / "node.key"))
    ledger.append([compute(0, "edge-pt", "edge", "pre-training", 9 * 10**24, high=10**25)],
                  T0 + 60 * SECOND, {"edge-pt": RunRow("edge-pt", "edge", "pre-training")})
    ledger.close()
    policy = policy_of(POLICY, tmp_path, load_registry())
    assert gate_on(path, "edge", "open-weights", policy).tier.name == "top"
    central = policy_of(POLICY.replace('estimate = "high"', 'estimate = "central"'), tmp_path,
                        load_registry())
    assert gate_on(path, "edge", "open-weights", central).tier.name == "mid"


def test_unsealed_records_are_counted_at_the_high_end(tmp_path: Path) -> None:
    # Sealed: 9.6e22 central, 1.008e23 high; judged at central: below "mid". A record of
    # the current window, not yet under a signed head, makes the gate count it and judge
    # at the high end whatever the policy says.
    central_policy = POLICY.replace('estimate = "high"', 'estimate = "central"')
    runs = [("m", "m-pt", "pre-training", 96 * 10**21)]
    (tmp_path / "a").mkdir()
    sealed = write_ledger(tmp_path / "a" / "ledger.sqlite", runs=runs)
    policy = policy_of(central_policy, tmp_path, load_registry())
    d = gate_on(sealed, "m", "open-weights", policy)
    assert (d.tier.name, d.estimate, d.exit_code) == ("small", "central", EXIT_ALLOWED)
    (tmp_path / "b").mkdir()
    pending = compute(1, "m-pt", "m", "pre-training", 10**21, start_s=60)
    with_open = write_ledger(tmp_path / "b" / "ledger.sqlite", runs=runs, still_open=[pending])
    d = gate_on(with_open, "m", "open-weights", policy)
    assert d.figures.unsealed_records == 1
    assert d.estimate == "high"
    assert "not yet under a signed head" in d.estimate_reason
    assert (d.tier.name, d.exit_code) == ("mid", EXIT_NOT_ALLOWED)
    assert d.checks[1].total.central == 96 * 10**21 + 10**21


def test_a_model_without_compute_records_cannot_be_placed_below_a_tier(tmp_path: Path) -> None:
    path = write_ledger(tmp_path / "ledger.sqlite")
    policy = policy_of(POLICY, tmp_path, load_registry())
    d = gate_on(path, "ghost", "open-weights", policy)
    assert (d.exit_code, d.verdict) == (EXIT_EVALUATIONS, "unmeasured")
    assert d.headline.startswith("no compute records for ghost: the gate cannot place ghost "
                                 "below any tier")
    assert d.estimate == "high"
    allowed = gate_on(path, "ghost", "open-weights", policy, allow_unmeasured=True)
    assert (allowed.exit_code, allowed.tier.name) == (EXIT_ALLOWED, "small")
    assert allowed.to_json()["unmeasured"] == ["no compute records for ghost"]
    # Declared compute is known compute: placed by it.
    declared = {"ghost": ModelInfo("ghost", declared_flop=Flop.exact(3 * 10**25))}
    d = gate_on(path, "ghost", "structured-access", policy, models=declared)
    assert (d.tier.name, d.verdict) == ("top", "evaluations-missing")


def test_unknown_compute_does_not_matter_once_the_first_tier_is_reached(tmp_path: Path) -> None:
    # A fine-tune of a base nobody measured or declared, but already over 1e25 itself.
    runs = [("huge-ft", "huge-ft-run", "fine-tuning", 2 * 10**25)]
    path = write_ledger(tmp_path / "ledger.sqlite", runs=runs,
                        meta={"huge-ft-run": {"base_models": ["elsewhere"]}})
    d = gate_on(path, "huge-ft", "structured-access", policy_of(POLICY, tmp_path,
                                                                load_registry()))
    assert d.figures.unmeasured
    assert "base model elsewhere" in d.figures.unmeasured[0]
    assert (d.tier.name, d.verdict) == ("top", "evaluations-missing")


def test_a_fine_tune_falls_in_its_base_models_tier_where_the_scope_inherits(
        tmp_path: Path) -> None:
    runs = [*RUNS, ("chat", "chat-ft", "fine-tuning", 10**21)]
    path = write_ledger(tmp_path / "ledger.sqlite", runs=runs,
                        meta={"chat-ft": {"base_models": ["big"]}})
    policy = policy_of(POLICY, tmp_path, load_registry())
    d = gate_on(path, "chat", "open-weights", policy)
    assert d.figures.ancestors == ("big",)
    assert (d.tier.name, d.exit_code) == ("top", EXIT_NOT_ALLOWED)
    # A first tier on the compute of the modification alone (no inheritance): chat's own
    # 1e21 does not reach 1e23 there; the next tier's scope inherits big's compute.
    own_only = POLICY.replace('regime = "eu-art51-systemic-risk"',
                              'min_flop = 1e23\nscope = "modification"')
    d = gate_on(path, "chat", "open-weights", policy_of(own_only, tmp_path, load_registry()))
    assert (d.checks[0].reached, d.checks[0].scope) == (False, "modification")
    assert d.checks[0].total.central == 10**21
    assert (d.tier.name, d.exit_code) == ("mid", EXIT_NOT_ALLOWED)
    # The same lineage declared in the config rather than by the run.
    (tmp_path / "cfg").mkdir()
    plain = write_ledger(tmp_path / "cfg" / "ledger.sqlite", runs=runs)
    lineage = {"chat": ModelInfo("chat", ("big",))}
    assert gate_on(plain, "chat", "open-weights", policy, models=lineage).tier.name == "top"
    assert gate_on(plain, "chat", "open-weights", policy).tier.name == "small"


def test_a_modifier_is_judged_by_the_registrys_fraction_of_its_base(tmp_path: Path) -> None:
    # The shipped policy: a modifier of a systemic-risk base is in the modified tier once
    # its own compute exceeds a third of the base's low bound (1.9e25 / 3 = 6.3e24).
    registry = load_registry()
    policy = load_policy(REPO / "configs" / "release.toml", registry)
    models = {"mod": ModelInfo("mod", ("big",), role="modifier")}
    for own, tier in ((7 * 10**24, "modified-systemic-risk"), (10**24, "below-thresholds")):
        directory = tmp_path / str(own)
        directory.mkdir()
        runs = [*RUNS, ("mod", "mod-ft", "fine-tuning", own)]
        path = write_ledger(directory / "ledger.sqlite", runs=runs)
        d = gate_on(path, "mod", "open-weights", policy, models=models)
        assert d.tier.name == tier, d.lines()
        by_tier = {c.tier.name: c for c in d.checks}
        modified = by_tier["modified-systemic-risk"]
        assert modified.threshold_flop == pytest.approx(19 * 10**24 / 3)
        assert "of the base model's low bound" in modified.note
        # Provider regimes do not apply to a modifier.
        assert by_tier["systemic-risk"].threshold_flop is None


# ---------------------------------------------------------------------------------------
# The policy file.


def _policy_error(tmp_path: Path, text: str) -> str:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_policy(path, load_registry())
    message = str(e.value)
    assert str(path) in message
    return message


@pytest.mark.parametrize(("change", "key", "expected"), [
    (('regime = "eu-art51-systemic-risk"', 'regime = "eu-art99"'), "tiers[0].regime",
     "one of the regimes of"),
    (('modes = ["structured-access", "internal"]', 'modes = ["structured", "internal"]'),
     "tiers[0].modes", "a non-empty list of release modes"),
    (('modes = ["structured-access", "internal"]', "modes = []"), "tiers[0].modes",
     "a non-empty list of release modes"),
    (("staged = [\"red-team\", \"refusal\"]", "open-weights = [\"red-team\"]"),
     "tiers[1].evaluations.open-weights", "a mode this tier allows"),
    (("staged = [\"red-team\", \"refusal\"]", "public = [\"red-team\"]"),
     "tiers[1].evaluations.public", "a release mode"),
    (('scope = "parameter-update"', 'scope = "everything"'), "tiers[1].scope",
     "one of the scopes of"),
    (('scope = "parameter-update"\n', ""), "tiers[1].scope", "one of the scopes of"),
    (("min_flop = 1e23", "min_flop = -1"), "tiers[1].min_flop", "a number of FLOP > 0"),
    (("min_flop = 1e23", "min_flop = nan"), "tiers[1].min_flop", "a finite number"),
    (('name = "mid"\n', 'name = "mid"\nregime = "eu-gpai-indicative"\n'), "tiers[1]",
     "either regime, or min_flop with scope"),
    (('estimate = "high"', 'estimate = "median"'), "estimate", "one of ['low', 'central'"),
    (("min_score = 0.9", 'min_score = "high"'), "evaluations.refusal.min_score",
     "a finite number"),
    (("min_score = 0.9", "min_score = 0.9\nweight = 2"), "evaluations.refusal.weight",
     "one of the known keys"),
    (('name = "mid"', 'name = "top"'), "tiers", "tier names used once each"),
    (("[default]\nname = \"small\"\n", "[defaults]\n"), "default", "a [default] table"),
    (('evaluations = ["red-team"]', 'evaluations = ["red\\nteam"]'), "tiers[0].evaluations[0]",
     "an evaluation name"),
    (('name = "top"\n', ""), "tiers[0].name", "a tier name"),
    (('estimate = "high"', 'estimate = "high"\nowner = "x"'), "owner", "one of the tables"),
])
def test_policy_errors_name_file_key_and_expectation(tmp_path: Path, change: tuple[str, str],
                                                     key: str, expected: str) -> None:
    old, new = change
    assert old in POLICY
    message = _policy_error(tmp_path, POLICY.replace(old, new, 1))
    assert f"  {key}: expected " in message, message
    assert expected in message, message


def test_every_policy_problem_is_reported_at_once(tmp_path: Path) -> None:
    text = POLICY.replace('regime = "eu-art51-systemic-risk"', 'regime = "nope"').replace(
        'estimate = "high"', 'estimate = "most"')
    message = _policy_error(tmp_path, text)
    assert "2 problem(s)" in message
    assert "tiers[0].regime" in message
    assert "  estimate: expected" in message


@pytest.mark.parametrize(("content", "expected"), [
    (b"tiers = [", "valid TOML"),
    (b"\xff\xfe", "valid TOML in UTF-8"),
])
def test_a_policy_that_is_not_toml(tmp_path: Path, content: bytes, expected: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=expected):
        load_policy(path, load_registry())
    with pytest.raises(ConfigError, match="not found"):
        load_policy(tmp_path / "missing.toml", load_registry())


def test_the_shipped_policy_is_the_example_and_parses() -> None:
    shipped = REPO / "agent" / "data" / "release.toml"
    example = REPO / "configs" / "release.toml"
    assert shipped.read_bytes() == example.read_bytes()
    policy = load_policy(shipped, load_registry())
    assert policy.sha256 == hashlib.sha256(shipped.read_bytes()).hexdigest()
    assert [t.name for t in policy.tiers] == ["frontier", "systemic-risk",
                                             "modified-systemic-risk", "general-purpose"]
    text = example.read_text()
    assert "Heim & Koessler (2024)" in text
    assert "arXiv:2405.10799" in text
    assert "Seger et al. (2023)" in text
    assert "arXiv:2311.09227" in text
    tomllib.loads(text)


# ---------------------------------------------------------------------------------------
# Attestations.


@pytest.mark.parametrize(("text", "ok"), [
    ("https://evals.example/run/1", True), ("s3://bucket/key", True), ("/srv/evals/1.json", True),
    ("file:///srv/x", True), ("evals/1.json", False), ("", False), ("https:", False),
    ("/srv/a\nb", False), (" /srv/a", False), ("/srv/\x1b[31m", False),
    ("https://x/" + "a" * 3000, False),
])
def test_evidence_must_be_a_uri_or_an_absolute_path(text: str, ok: bool) -> None:
    assert (evidence_problem(text) is None) == ok


@pytest.mark.parametrize(("text", "expected"), [
    ("pass", ("pass", None)), ("fail", ("fail", None)), ("score=0.5", ("score", 0.5)),
    ("score=-3", ("score", -3.0)),
])
def test_results(text: str, expected: tuple[str, float | None]) -> None:
    assert parse_result(text) == expected


@pytest.mark.parametrize("text", ["score=nan", "score=inf", "score=", "score=x", "passed", ""])
def test_bad_results(text: str) -> None:
    with pytest.raises(ValueError, match="--result"):
        parse_result(text)


def test_a_malformed_attestation_is_said_and_never_counted(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    write_ledger(path, attestations=[("medium", "red-team", "fail")])
    ledger = Ledger(path, "node-1", load_or_create_key(tmp_path / "node.key"))
    forged = make_statement("attestation", node="node-1", time_ns=T0, model="medium",
                            payload={"evaluation": "red-team", "result": "passed"})
    ledger.append([forged], T0 + 200 * SECOND)
    ledger.close()
    d = gate_on(path, "medium", "staged", policy_of(POLICY, tmp_path, load_registry()))
    assert {f.evaluation: f.status for f in d.findings}["red-team"] == "failed"
    assert d.attested.malformed
    assert "malformed attestation (result" in d.attested.malformed[0]
    assert any(line.startswith("WARNING   not counted: record 4") for line in d.lines())


# ---------------------------------------------------------------------------------------
# The decision recorded, and the same decision from a bundle.


def test_the_decision_is_recorded_as_a_signed_statement_that_verifies(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_ledger(tmp_path / "ledger.sqlite", attestations=[("big", "red-team", "pass")])
    policy_path = tmp_path / "release.toml"
    policy_path.write_text(POLICY)
    status, out, err = cli("gate", "big", "--mode", "structured-access", "--policy",
                           str(policy_path), "--ledger", str(path), capsys=capsys)
    assert status == EXIT_ALLOWED, out + err
    assert out.splitlines()[-1] == f"recorded the decision as record 4 of the ledger {path}"
    status, out, _ = cli("verify", str(path), capsys=capsys)
    assert status == 0, out
    assert out.splitlines()[-1] == "OK: every check passed"
    (gate,) = statements(path, kinds=("gate",), model="big")
    payload = gate.assumptions
    assert gate.seq == 4
    assert payload["verdict"] == "allowed"
    assert payload["exit_code"] == 0
    assert payload["policy_sha256"] == hashlib.sha256(policy_path.read_bytes()).hexdigest()
    assert payload["tier"]["name"] == "top"
    assert payload["attestations"][0]["record"] == 3
    assert len(payload["message_id"]) == 32
    assert "recorded" not in payload


def _gate_json(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, object]]:
    status, out, err = cli("gate", *args, "--format", "json", capsys=capsys)
    assert out.strip(), err
    doc = json.loads(out)
    assert doc["exit_code"] == status
    return status, doc


@pytest.mark.parametrize(("model", "mode"), [("medium", "staged"), ("big", "open-weights"),
                                             ("medium", "structured-access")])
def test_a_bundle_gives_the_ledgers_decision_and_is_not_recorded(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], model: str, mode: str) -> None:
    path = write_ledger(tmp_path / "ledger.sqlite",
                        attestations=[("medium", "red-team", "pass"),
                                      ("medium", "refusal", "score=0.8"),
                                      ("big", "red-team", "pass")])
    policy = tmp_path / "release.toml"
    policy.write_text(POLICY)
    bundle = tmp_path / "bundle.json"
    status, out, err = cli("export", "--model", model, "-o", str(bundle), "--ledger", str(path),
                           capsys=capsys)
    assert status == 0, err
    size = read_view(path).head_size
    from_ledger, ledger_doc = _gate_json(capsys, model, "--mode", mode, "--policy", str(policy),
                                         "--ledger", str(path))
    from_bundle, bundle_doc = _gate_json(capsys, model, "--mode", mode, "--policy", str(policy),
                                         "--bundle", str(bundle))
    assert from_ledger == from_bundle
    same = ("verdict", "tier", "checks", "evaluations", "missing", "suggested_mode",
            "attestations", "estimate", "unmeasured")
    assert {k: ledger_doc[k] for k in same} == {k: bundle_doc[k] for k in same}
    assert ledger_doc["recorded"]["status"] == "recorded"  # type: ignore[index]
    assert bundle_doc["recorded"] == {"status": "not-recorded", "reason": "a bundle is "
                                      "read-only evidence", "record": None, "file": "",
                                      "message_id": ""}
    assert read_view(path).head_size == size + 1  # the ledger's gate only
    status, out, _ = cli("gate", model, "--mode", mode, "--policy", str(policy), "--bundle",
                         str(bundle), capsys=capsys)
    assert status == from_bundle
    assert out.splitlines()[-1] == ("the decision was not recorded: a bundle is read-only "
                                    "evidence")


def _tamper(bundle: Path, section: str, old: str, new: str) -> None:
    doc = json.loads(bundle.read_text())
    entry = next(e for e in doc[section] if old in e["body"])
    entry["body"] = entry["body"].replace(old, new)
    bundle.write_text(json.dumps(doc))


@pytest.mark.parametrize(("section", "old", "new"), [
    ("records", '"flop_central":500000000000000000000000', '"flop_central":5000000000000000000'),
    ("statements", '"result":"fail"', '"result":"pass"'),
])
def test_a_tampered_bundle_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                   section: str, old: str, new: str) -> None:
    path = write_ledger(tmp_path / "ledger.sqlite", attestations=[("medium", "red-team", "fail")])
    bundle = tmp_path / "bundle.json"
    assert cli("export", "--model", "medium", "-o", str(bundle), "--ledger", str(path),
               capsys=capsys)[0] == 0
    _tamper(bundle, section, old, new)
    status, out, err = cli("gate", "medium", "--mode", "staged", "--bundle", str(bundle),
                           capsys=capsys)
    assert status == 1
    assert out == ""
    assert err.startswith(f"flopledger: the bundle {bundle} fails verification: ")
    assert "not in the signed ledger at that position" in err


def test_a_bundle_of_another_selection_is_refused(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    path = write_ledger(tmp_path / "ledger.sqlite")
    bundle = tmp_path / "bundle.json"
    assert cli("export", "--run", "medium-pt", "-o", str(bundle), "--ledger", str(path),
               capsys=capsys)[0] == 0
    status, _, err = cli("gate", "medium", "--mode", "staged", "--bundle", str(bundle),
                         capsys=capsys)
    assert status == 2
    assert "is of run medium-pt, not of model medium" in err

