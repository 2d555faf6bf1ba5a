"""A fixed snapshot, threshold state and notification status, and their exposition:
shared by the collector, rule, textfile, endpoint and end-to-end tests."""

from __future__ import annotations

import re

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from agent.accounting.band import Band
from agent.accounting.snapshot import DeclaredRunSnapshot, GpuSnapshot, RunSnapshot, Snapshot
from agent.compliance.state import ThresholdRow, ThresholdState
from agent.ledger.replication_status import ReplicationStatus
from agent.notify.status import ChannelStatus, NotifyStatus
from exporters.collector import FlopledgerCollector

VOLATILE = ("flopledger_collector_duration_seconds", "flopledger_build_info")


def sample_snapshot() -> Snapshot:
    gpus = (
        GpuSnapshot(index=0, uuid="GPU-00000000-0000-0000-0000-000000000000",
                    name="NVIDIA H100 80GB HBM3", spec_key="h100_sxm", source="nvml", up=True,
                    flop_low=9.5e18, flop_central=1.0e19, flop_high=1.05e19,
                    energy_joules=123456.789, covered_seconds=3600.0, gap_seconds=0.0,
                    rate_flops=5.3e14, estimator="gpm_tensor", sm_clock_hz=1.98e9,
                    utilization_ratio=0.97, tensor_activity_ratio=0.55, power_watts=612.5),
        GpuSnapshot(index=1, uuid="GPU-11111111-1111-1111-1111-111111111111",
                    name="NVIDIA H100 80GB HBM3", spec_key="h100_sxm", source="nvml", up=False,
                    flop_low=1.0e18, flop_central=2.0e18, flop_high=4.0e18,
                    energy_joules=2000.0, covered_seconds=300.0, gap_seconds=12.5,
                    rate_flops=0.0, estimator="none", sm_clock_hz=None,
                    utilization_ratio=None, tensor_activity_ratio=None, power_watts=None),
    )
    runs = (RunSnapshot(run_id="llama-70b-pt", model="llama-70b", category="pre-training",
                        flop_low=1.05e19, flop_central=1.2e19, flop_high=1.45e19,
                        energy_joules=125456.789, gpus=2, created_wall_seconds=1.7e9),)
    # As its trainer reported it: 6 x 70e9 x 2.5e7 tokens, 0.875 of the measured central.
    declared = (DeclaredRunSnapshot(run_id="llama-70b-pt", model="llama-70b",
                                    tokens=25_000_000, steps=50, planned_tokens=2.0e12,
                                    params=70e9, declared_flop=1.05e19, formula="6 x P x D",
                                    updated_wall_seconds=1.7e9 + 3590),)
    return Snapshot(source_kind="nvml", started_wall_seconds=1.7e9, gpus=gpus, runs=runs,
                    sample_errors=((1, gpus[1].uuid, "power_mw", 3),),
                    last_sample_wall_seconds=1.7e9 + 3600, ticks=3600, overruns=2,
                    integrations=720, rejected_samples=0, last_tick_duration_seconds=0.0012,
                    declared=declared)


def sample_thresholds() -> ThresholdState:
    rows = (
        ThresholdRow("model", "llama-70b", "eu-art51-systemic-risk", "central", 0.42,
                     86400.0 * 20, met=False, will_be_met=True,
                     deadline_wall_seconds=1.7e9 + 3000 + 14 * 86400.0,
                     fraction_band=Band(0.38, 0.40, 0.42)),
        ThresholdRow("run", "llama-70b-pt", "eu-art51-systemic-risk", "central", 0.42,
                     None, met=False, will_be_met=False),
    )
    return ThresholdState(evaluated_wall_seconds=1.7e9 + 3000, evaluations=50, rows=rows,
                          notifications_enqueued=1)


def sample_notify_status() -> NotifyStatus:
    return NotifyStatus.of({
        "webhook": ChannelStatus(pending=1, delivered=4, failed_attempts=7, retrying=1,
                                 dead=1),
        "alertmanager": ChannelStatus(pending=0, active=1, delivered=5),
    }, read_wall_ns=1_700_003_000 * 10**9)


def registry_of(collector: Collector) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry


def exposition(snap: Snapshot | None) -> str:
    return generate_latest(registry_of(FlopledgerCollector(lambda: snap))).decode()


def sample_replication() -> ReplicationStatus:
    """A node shipping to its cluster store, 120 records behind."""
    return ReplicationStatus(up=True, backlog_records=120, shipped_records=5000,
                             failed_attempts=2, last_success_wall_seconds=1.75e9)


def full_exposition() -> str:
    """Every collector the agent runs: the snapshot's, thresholds, notifications and
    replication."""
    return generate_latest(registry_of(FlopledgerCollector(
        sample_snapshot, sample_thresholds, sample_notify_status,
        sample_replication))).decode()


def stable(text: str) -> str:
    return "".join(
        line + "\n" for line in text.splitlines() if not any(v in line for v in VOLATILE)
    )


# Series the agent does not export but Prometheus makes itself.
PROMETHEUS_SERIES = {"up", "scrape_duration_seconds"}


def exported_names() -> set[str]:
    """Every sample name the agent exports (every collector, every part present)."""
    names: set[str] = set()
    for family in text_string_to_metric_families(full_exposition()):
        names.update(s.name for s in family.samples)
    return names


def metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\bflopledger_[a-z_]+\b", expr))
