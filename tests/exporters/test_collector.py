"""The /metrics exposition: metric contract, golden exposition, promtool, and each
collector isolated with its own success and duration."""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from agent.accounting.accountant import Accountant
from agent.accounting.estimate import EstimatorSettings
from agent.accounting.snapshot import Snapshot
from agent.compliance.state import ThresholdState
from agent.notify.dispatcher import Dispatcher
from agent.notify.message import DeliveryError, Notification
from agent.notify.outbox import Outbox
from agent.sources.base import ActivityKind, DeviceInfo
from agent.sources.specs import ResolvedSpec, SpecBasis, SpecTable
from exporters.agent_self import AgentCollector
from exporters.collector import Exposition, FlopledgerCollector
from exporters.gpu import GpuCollector
from exporters.notifications import NotificationCollector
from exporters.runs import RunCollector
from exporters.thresholds import ThresholdCollector
from tests.exposition import (
    exposition,
    full_exposition,
    registry_of,
    sample_notify_status,
    sample_snapshot,
    sample_thresholds,
    stable,
)
from tests.paths import FIXTURES
from tests.receivers import T0, Clock, note

GOLDEN = FIXTURES / "metrics.golden.prom"


def test_exposition_matches_the_golden_file() -> None:
    text = stable(exposition(sample_snapshot()))
    if os.environ.get("UPDATE_GOLDEN"):
        GOLDEN.write_text(text)
    assert text == GOLDEN.read_text(), "run with UPDATE_GOLDEN=1 after a deliberate change"


def test_contract_metric_names_and_labels() -> None:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FlopledgerCollector(sample_snapshot))
    gpu0 = {"gpu": "0", "uuid": "GPU-00000000-0000-0000-0000-000000000000"}
    get = registry.get_sample_value
    assert get("flopledger_gpu_flop_total", gpu0) == 1.0e19
    assert get("flopledger_gpu_flop_low_total", gpu0) == 9.5e18
    assert get("flopledger_gpu_flop_high_total", gpu0) == 1.05e19
    assert get("flopledger_gpu_flop_per_second", gpu0) == 5.3e14
    assert get("flopledger_gpu_energy_joules_total", gpu0) == 123456.789
    assert get("flopledger_gpu_up", gpu0) == 1.0
    run = {"run": "llama-70b-pt", "model": "llama-70b", "category": "pre-training"}
    assert get("flopledger_run_flop_total", run) == 1.2e19
    assert get("flopledger_run_flop_low_total", run) == 1.05e19
    assert get("flopledger_run_flop_high_total", run) == 1.45e19
    assert get("flopledger_run_flop_created", run) == 1.7e9
    assert get("flopledger_sample_errors_total", {"gpu": "1", "field": "power_mw"}) == 3
    assert get("flopledger_last_sample_timestamp_seconds") == 1.7e9 + 3600
    assert get("flopledger_gpu_info", {**gpu0, "name": "NVIDIA H100 80GB HBM3",
                                        "source": "nvml", "spec": "table",
                                        "spec_key": "h100_sxm",
                                        "estimator": "gpm_tensor"}) == 1.0
    assert get("flopledger_build_info", {"version": __import__("agent").__version__}) == 1.0


def test_gpu_info_says_the_basis_of_each_peak(spec_table: SpecTable) -> None:
    # Through the accountant's snapshot, as the agent exports it: a GPU the table has
    # no row for is exported with spec="ceiling" or "derived", never as a table GPU.
    names = ("NVIDIA H100 80GB HBM3", "NVIDIA X999", "NVIDIA Z1")
    devices = [DeviceInfo(index=i, uuid=f"GPU-{i}", name=n, spec_key=None, max_sm_clock_mhz=None,
                          activity_kind=ActivityKind.NONE, source="nvml")
               for i, n in enumerate(names)]
    derived = ResolvedSpec(spec_table["h100_sxm"], SpecBasis.DERIVED, 0.8, 1.25,
                           "'NVIDIA Z1' matches no row: derived from compute capability 9.0")
    resolved = [spec_table.resolve(names[0]), spec_table.resolve(names[1]), derived]
    snap = Accountant(devices, resolved, EstimatorSettings(), 0, "nvml").snapshot()
    get = registry_of(GpuCollector(lambda: snap)).get_sample_value
    for i, (name, spec) in enumerate(zip(names, ("table", "ceiling", "derived"), strict=True)):
        labels = {"gpu": str(i), "uuid": f"GPU-{i}", "name": name, "source": "nvml",
                  "spec": spec, "spec_key": resolved[i].spec.key, "estimator": "none"}
        assert get("flopledger_gpu_info", labels) == 1.0, (name, spec)
    assert resolved[0].spec.key == "h100_sxm"


def test_unknown_readings_are_left_out_never_nan() -> None:
    text = exposition(sample_snapshot())
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            assert not math.isnan(s.value), s
    assert 'flopledger_gpu_sm_clock_hertz{gpu="1"' not in text
    assert "hostname" not in text


def test_no_snapshot_yet_still_answers() -> None:
    text = exposition(None)
    assert "flopledger_build_info" in text
    assert "flopledger_gpu_flop_total" not in text


@pytest.mark.skipif(shutil.which("promtool") is None,
                    reason="promtool missing: `make test` installs Debian's prometheus")
def test_promtool_accepts_the_exposition() -> None:
    for text in (GOLDEN.read_text(), exposition(sample_snapshot()), full_exposition()):
        result = subprocess.run(["promtool", "check", "metrics"], input=text, text=True,
                                capture_output=True, check=False)
        assert result.returncode == 0, result.stdout + result.stderr
        assert result.stdout.strip() == "", result.stdout
        assert result.stderr.strip() == "", result.stderr


# ----------------------------------------------------------------------------- collectors


def families(collector: Collector) -> dict[str, Metric]:
    return {f.name: f for f in collector.collect()}


def test_each_concern_has_its_own_collector() -> None:
    snap = sample_snapshot()
    gpu, runs, agent = (families(c(lambda: snap))
                        for c in (GpuCollector, RunCollector, AgentCollector))
    assert "flopledger_gpu_flop" in gpu
    assert "flopledger_sample_errors" in gpu
    assert set(runs) == {"flopledger_run_flop", "flopledger_run_flop_low",
                         "flopledger_run_flop_high", "flopledger_run_energy_joules",
                         "flopledger_run_gpus"}
    assert "flopledger_build_info" in agent
    assert "flopledger_sampler_ticks" in agent
    thresholds = families(ThresholdCollector(sample_thresholds))
    assert "flopledger_threshold_fraction_ratio" in thresholds
    notifications = families(NotificationCollector(sample_notify_status))
    assert set(notifications) == {"flopledger_notifications_pending",
                                  "flopledger_notifications_delivered",
                                  "flopledger_notifications_failed_attempts",
                                  "flopledger_notifications_dead"}
    kinds = {name: family.type for name, family in notifications.items()}
    assert kinds == {"flopledger_notifications_pending": "gauge",
                     "flopledger_notifications_delivered": "counter",
                     "flopledger_notifications_failed_attempts": "counter",
                     "flopledger_notifications_dead": "gauge"}
    names = [set(gpu), set(runs), set(agent), set(thresholds), set(notifications)]
    assert sum(len(n) for n in names) == len(set().union(*names)), "a family in two places"


def test_nothing_read_yet_leaves_the_collectors_quiet() -> None:
    assert families(GpuCollector(lambda: None)) == {}
    assert families(RunCollector(lambda: None)) == {}
    assert set(families(AgentCollector(lambda: None))) == {"flopledger_build_info"}
    assert families(ThresholdCollector(lambda: None)) == {}
    assert families(NotificationCollector(lambda: None)) == {}


def test_threshold_and_notification_series() -> None:
    get = registry_of(FlopledgerCollector(sample_snapshot, sample_thresholds,
                                          sample_notify_status)).get_sample_value
    model = {"subject_type": "model", "subject": "llama-70b",
             "regime": "eu-art51-systemic-risk", "estimate": "central"}
    run = {**model, "subject_type": "run", "subject": "llama-70b-pt"}
    assert get("flopledger_threshold_fraction_ratio", model) == 0.42
    assert get("flopledger_threshold_eta_seconds", model) == 86400.0 * 20
    assert get("flopledger_threshold_eta_seconds", run) is None  # not moving: left out
    assert get("flopledger_threshold_will_be_met", model) == 1.0
    assert get("flopledger_threshold_will_be_met", run) == 0.0
    assert get("flopledger_threshold_last_evaluation_timestamp_seconds") == 1.7e9 + 3000
    assert get("flopledger_notifications_pending", {"channel": "webhook"}) == 1.0
    assert get("flopledger_notifications_delivered_total", {"channel": "alertmanager"}) == 5.0
    assert get("flopledger_notifications_failed_attempts_total", {"channel": "webhook"}) == 7.0
    assert get("flopledger_notifications_delivered", {"channel": "alertmanager"}) is None
    assert get("flopledger_notifications_dead", {"channel": "webhook"}) == 1.0
    assert get("flopledger_notifications_dead", {"channel": "alertmanager"}) == 0.0
    for name in ("gpu", "runs", "agent", "thresholds", "notifications"):
        assert get("flopledger_collector_success", {"collector": name}) == 1.0, name
        duration = get("flopledger_collector_duration_seconds", {"collector": name})
        assert duration is not None
        assert duration >= 0.0
    # The labelled duration replaced the unlabelled one.
    assert get("flopledger_collector_duration_seconds") is None


class Flaky:
    """A one-shot channel: down (retryable), gone (a dead letter), or delivering."""

    resend_ns = None

    def __init__(self) -> None:
        self.mode = "down"

    def deliver(self, n: Notification) -> None:
        if self.mode != "up":
            raise DeliveryError(f"receiver {self.mode}", retryable=self.mode == "down")


def test_notification_counters_never_go_down_across_requeues_and_restarts(
        tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    channel = Flaky()
    seen: list[dict[str, float]] = []

    clock = Clock()

    def scrape(dispatcher: Dispatcher) -> dict[str, float]:
        clock.advance(3600)  # past any backoff
        dispatcher.run_once(clock())
        get = registry_of(NotificationCollector(lambda: dispatcher.status)).get_sample_value
        values = {name: get(f"flopledger_notifications_{name}", {"channel": "hook"})
                  for name in ("delivered_total", "failed_attempts_total", "pending", "dead")}
        seen.append({k: float(v) for k, v in values.items() if v is not None})
        return seen[-1]

    with Outbox(path, ["hook"]) as outbox:
        dispatcher = Dispatcher(outbox, {"hook": channel}, clock)
        for i in (1, 2):
            outbox.enqueue(note(i), now_ns=T0)
        assert scrape(dispatcher) == {"delivered_total": 0, "failed_attempts_total": 1,
                                      "pending": 2, "dead": 0}
        channel.mode = "gone"
        assert scrape(dispatcher) == {"delivered_total": 0, "failed_attempts_total": 3,
                                      "pending": 0, "dead": 2}
        assert outbox.requeue_dead("hook", now_ns=clock()) == 2
        channel.mode = "up"
        assert scrape(dispatcher) == {"delivered_total": 2, "failed_attempts_total": 3,
                                      "pending": 0, "dead": 0}
    # A restart: a new outbox connection and dispatcher read the same counts.
    with Outbox(path, ["hook"]) as outbox:
        assert scrape(Dispatcher(outbox, {"hook": channel}, clock))["delivered_total"] == 2
    for name in ("delivered_total", "failed_attempts_total"):
        values = [s[name] for s in seen]
        assert values == sorted(values), (name, values)
    assert [s["dead"] for s in seen] == [0, 2, 0, 0]  # a gauge: it goes down


class HalfThenRaise(Collector):
    """Yields one family, then fails: nothing of it may reach the exposition."""

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily("flopledger_half_built", "Never exported.", labels=["x"])
        family.add_metric(["1"], 1.0)
        yield family
        raise RuntimeError("a bug in a collector")


def test_a_failing_collector_drops_only_its_own_series(
        caplog: pytest.LogCaptureFixture) -> None:
    snap = sample_snapshot()
    registry = registry_of(Exposition([("gpu", GpuCollector(lambda: snap)),
                                       ("broken", HalfThenRaise()),
                                       ("runs", RunCollector(lambda: snap))]))
    for _ in range(3):
        text = generate_latest(registry).decode()
        get = registry.get_sample_value
        assert get("flopledger_collector_success", {"collector": "broken"}) == 0.0
        assert get("flopledger_collector_success", {"collector": "gpu"}) == 1.0
        assert get("flopledger_collector_success", {"collector": "runs"}) == 1.0
        assert get("flopledger_collector_duration_seconds", {"collector": "broken"}) is not None
        gpu0 = {"gpu": "0", "uuid": "GPU-00000000-0000-0000-0000-000000000000"}
        assert get("flopledger_gpu_flop_total", gpu0) == 1.0e19
        assert get("flopledger_run_flop_total", {"run": "llama-70b-pt", "model": "llama-70b",
                                                 "category": "pre-training"}) == 1.2e19
        assert "flopledger_half_built" not in text
    # Logged with its traceback once when it starts failing, not at every scrape.
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1
    assert "broken" in errors[0].getMessage()


def test_a_failing_input_drops_only_that_collector() -> None:
    def unreadable() -> ThresholdState:
        raise OSError("state unreadable")

    registry = registry_of(FlopledgerCollector(sample_snapshot, unreadable,
                                               sample_notify_status))
    get = registry.get_sample_value
    assert get("flopledger_collector_success", {"collector": "thresholds"}) == 0.0
    assert get("flopledger_collector_success", {"collector": "notifications"}) == 1.0
    assert get("flopledger_gpu_flop_total",
               {"gpu": "0", "uuid": "GPU-00000000-0000-0000-0000-000000000000"}) == 1.0e19
    assert get("flopledger_threshold_last_evaluation_timestamp_seconds") is None
    assert get("flopledger_notifications_pending", {"channel": "webhook"}) == 1.0


def test_one_snapshot_per_scrape_for_gpus_runs_and_agent() -> None:
    # The GPU and run totals of one scrape must come from the same snapshot, even if
    # the sampler publishes a new one mid-scrape.
    snaps = [sample_snapshot(), sample_snapshot()]
    later = snaps[1]
    snaps[1] = dataclasses.replace(later, ticks=later.ticks + 1, gpus=later.gpus[:1], runs=())
    reads: list[Snapshot] = []

    def latest() -> Snapshot:
        reads.append(snaps[min(len(reads), 1)])
        return reads[-1]

    registry = registry_of(FlopledgerCollector(latest))
    text = generate_latest(registry).decode()
    assert len(reads) == 1
    assert 'flopledger_gpu_flop_total{gpu="1"' in text  # both from the first snapshot
    assert "flopledger_run_flop_total{" in text
    assert "flopledger_sampler_ticks_total 3600.0" in text
    generate_latest(registry)
    assert len(reads) == 2  # and a fresh read at the next scrape



def test_a_collector_that_recovers_is_served_again() -> None:
    fail = [True]

    class Flaky(Collector):
        def collect(self) -> Iterator[Metric]:
            if fail[0]:
                raise OSError("not readable yet")
            yield from GpuCollector(sample_snapshot).collect()

    registry = registry_of(Exposition([("gpu", Flaky())]))
    gpu0 = {"gpu": "0", "uuid": "GPU-00000000-0000-0000-0000-000000000000"}
    assert registry.get_sample_value("flopledger_collector_success", {"collector": "gpu"}) == 0
    assert registry.get_sample_value("flopledger_gpu_flop_total", gpu0) is None
    fail[0] = False
    assert registry.get_sample_value("flopledger_collector_success", {"collector": "gpu"}) == 1
    assert registry.get_sample_value("flopledger_gpu_flop_total", gpu0) == 1.0e19
