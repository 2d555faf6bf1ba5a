"""Threshold series: the stored legal deadline, exported only once it is fixed, and the
band of the fraction reached."""

from __future__ import annotations

from agent.accounting.band import Band
from agent.compliance.state import ThresholdRow, ThresholdState
from exporters.thresholds import ThresholdCollector
from tests.exposition import registry_of

DEADLINE = "flopledger_threshold_deadline_timestamp_seconds"
BAND = "flopledger_threshold_fraction_band_ratio"
MET_WALL_S = 1.75e9


def state(*rows: ThresholdRow) -> ThresholdState:
    return ThresholdState(evaluated_wall_seconds=MET_WALL_S + 60, evaluations=3, rows=rows,
                          notifications_enqueued=0)


def labels(subject: str) -> dict[str, str]:
    return {"subject_type": "model", "subject": subject,
            "regime": "eu-art51-systemic-risk", "estimate": "high"}


def test_deadline_is_the_stored_one_and_absent_when_none_is_fixed() -> None:
    fixed = ThresholdRow("model", "met-model", "eu-art51-systemic-risk", "high", 1.2, None,
                         met=True, will_be_met=False,
                         deadline_wall_seconds=MET_WALL_S + 14 * 86400.0)
    open_ = ThresholdRow("model", "young-model", "eu-art51-systemic-risk", "high", 0.03,
                         86400.0 * 400, met=False, will_be_met=False)
    registry = registry_of(ThresholdCollector(lambda: state(fixed, open_)))
    assert registry.get_sample_value(DEADLINE, labels("met-model")) == MET_WALL_S + 14 * 86400
    assert registry.get_sample_value(DEADLINE, labels("young-model")) is None
    # The evaluation time moves on; the deadline does not.
    later = ThresholdState(MET_WALL_S + 86400 * 3, 900, (fixed, open_), 1)
    registry = registry_of(ThresholdCollector(lambda: later))
    assert registry.get_sample_value(DEADLINE, labels("met-model")) == MET_WALL_S + 14 * 86400


def test_band_has_the_three_flop_estimates_and_is_absent_without_a_flop_threshold() -> None:
    flop = ThresholdRow("model", "flop-model", "eu-art51-systemic-risk", "high", 0.5, None,
                        met=False, will_be_met=False, fraction_band=Band(0.25, 0.4, 0.5))
    cost_only = ThresholdRow("model", "cost-model", "eu-art51-systemic-risk", "high", 0.7,
                             None, met=False, will_be_met=False)
    registry = registry_of(ThresholdCollector(lambda: state(flop, cost_only)))
    for estimate, expected in (("low", 0.25), ("central", 0.4), ("high", 0.5)):
        assert registry.get_sample_value(
            BAND, {**labels("flop-model"), "estimate": estimate}) == expected, estimate
        assert registry.get_sample_value(
            BAND, {**labels("cost-model"), "estimate": estimate}) is None, estimate
    # The fraction that decides notifications is still exported beside the band.
    assert registry.get_sample_value("flopledger_threshold_fraction_ratio",
                                     labels("cost-model")) == 0.7
