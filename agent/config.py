"""The agent's TOML configuration, validated at start with every problem at once.

Example (``configs/agent.example.toml`` has every key with its default)::

    [agent]
    interval_s = 1.0
    source = "auto"          # auto | nvml | simulated
    listen = "0.0.0.0:9947"

    [sim]
    scenario = "pretrain-bf16"
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from agent.accounting.attribution import AttributionSettings, parse_attribution_config
from agent.accounting.estimate import EstimatorSettings
from agent.accounting.runs import CATEGORIES
from agent.compliance.lineage import ModelInfo, parse_models
from agent.compliance.thresholds import ThresholdSettings, parse_threshold_settings
from agent.configfile import ConfigError, Problems, TableReader, check_keys, read_toml
from agent.notify.config import NotifySettings, parse_notify_config
from agent.sources.scenarios import SCENARIOS, SimJob, Workload, parse_sim_jobs, workload_from_table
from agent.sources.specs import MATMUL_PRECISIONS

__all__ = ["CATEGORIES", "Config", "ConfigError", "load_config", "parse_config", "parse_listen"]

MIN_INTERVAL_S = 0.1
SOURCES = ("auto", "nvml", "simulated")


@dataclass(frozen=True, slots=True)
class SimSettings:
    scenario: str = "pretrain-bf16"
    gpus: int = 8
    gpu_model: str = "h100_sxm"
    seed: int = 1
    virtual_time: bool = False
    time_scale: float = 1.0
    epoch_unix_s: float | None = None
    workload: Workload = field(default_factory=Workload)
    jobs: tuple[SimJob, ...] | None = None


@dataclass(frozen=True, slots=True)
class WebSettings:
    """``[web]``: the exporter web-config file (TLS, mTLS, basic auth)."""

    config_file: Path | None = None


@dataclass(frozen=True, slots=True)
class TextfileSettings:
    """``[textfile]``: also write the exposition for node_exporter's textfile collector."""

    path: Path | None = None
    every_s: float = 15.0


@dataclass(frozen=True, slots=True)
class AgentSettings:
    interval_s: float = 1.0
    integrate_every: int = 5
    source: str = "auto"
    listen_host: str = "0.0.0.0"
    listen_port: int = 9947
    state_dir: Path = Path("var")
    node: str = field(default_factory=socket.gethostname)
    checkpoint_s: float = 5.0
    record_s: float = 60.0
    export_runs_for_s: float = 7 * 86400.0
    spec_file: Path | None = None
    thresholds_file: Path | None = None
    exit_after_s: float | None = None
    summary_file: Path | None = None


@dataclass(frozen=True, slots=True)
class Config:
    """Everything the agent reads from its config file."""

    path: Path | None = None
    agent: AgentSettings = field(default_factory=AgentSettings)
    estimator: EstimatorSettings = field(default_factory=EstimatorSettings)
    attribution: AttributionSettings = field(default_factory=AttributionSettings)
    models: dict[str, ModelInfo] = field(default_factory=dict)
    sim: SimSettings = field(default_factory=SimSettings)
    thresholds: ThresholdSettings = field(default_factory=ThresholdSettings)
    notify: NotifySettings = field(default_factory=NotifySettings)
    web: WebSettings = field(default_factory=WebSettings)
    textfile: TextfileSettings = field(default_factory=TextfileSettings)


def parse_listen(value: str) -> tuple[str, int] | None:
    """``host:port`` or ``:port`` -> (host, port); None if malformed."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        return None
    return (host.strip("[]") or "0.0.0.0"), int(port_text)


def _agent(problems: Problems, raw: dict[str, Any]) -> AgentSettings:
    known = {f.name for f in fields(AgentSettings)} - {"listen_host", "listen_port"} | {"listen"}
    r = TableReader.section(problems, raw, "agent", known)
    d = AgentSettings()
    interval = r.get("interval_s", (int, float), d.interval_s,
                     f"a number of seconds >= {MIN_INTERVAL_S}")
    if interval < MIN_INTERVAL_S:
        problems.add("agent.interval_s", f"a number of seconds >= {MIN_INTERVAL_S}")
        interval = d.interval_s
    every = r.get("integrate_every", int, d.integrate_every, "an integer number of ticks >= 1")
    if every < 1:
        problems.add("agent.integrate_every", "an integer number of ticks >= 1")
        every = d.integrate_every
    source = r.get("source", str, d.source, f"one of {SOURCES}")
    if source not in SOURCES:
        problems.add("agent.source", f"one of {SOURCES}")
        source = d.source
    listen = r.get("listen", str, f"{d.listen_host}:{d.listen_port}", "\"host:port\"")
    parsed = parse_listen(listen)
    if parsed is None:
        problems.add("agent.listen", "\"host:port\" with a port between 0 and 65535")
        parsed = (d.listen_host, d.listen_port)
    state_dir = Path(r.get("state_dir", str, str(d.state_dir), "a directory path"))
    node = r.get("node", str, d.node, "a node name")
    if not node or any(c.isspace() or c == "/" for c in node):
        problems.add("agent.node", "a non-empty node name without spaces or '/'")
        node = d.node
    checkpoint = r.get("checkpoint_s", (int, float), d.checkpoint_s, "a number of seconds >= 0.5")
    if checkpoint < 0.5:
        problems.add("agent.checkpoint_s", "a number of seconds >= 0.5")
        checkpoint = d.checkpoint_s
    record_s = r.get("record_s", (int, float), d.record_s, "a number of seconds >= checkpoint_s")
    if record_s < checkpoint:
        problems.add("agent.record_s", "a number of seconds >= agent.checkpoint_s")
        record_s = max(d.record_s, checkpoint)
    export_for = r.get("export_runs_for_s", (int, float), d.export_runs_for_s,
                       "a number of seconds >= 0")
    spec_file = r.get("spec_file", str, None, "a path to a GPU spec table")
    thresholds_file = r.get("thresholds_file", str, None, "a path to a thresholds table")
    exit_after = r.get("exit_after_s", (int, float), None, "a number of seconds > 0")
    if exit_after is not None and exit_after <= 0:
        problems.add("agent.exit_after_s", "a number of seconds > 0")
        exit_after = None
    summary = r.get("summary_file", str, None, "a file path")
    return AgentSettings(
        interval_s=float(interval),
        integrate_every=every,
        source=source,
        listen_host=parsed[0],
        listen_port=parsed[1],
        state_dir=state_dir,
        node=node,
        checkpoint_s=float(checkpoint),
        record_s=float(record_s),
        export_runs_for_s=float(export_for),
        spec_file=Path(spec_file) if spec_file else None,
        thresholds_file=Path(thresholds_file) if thresholds_file else None,
        exit_after_s=float(exit_after) if exit_after is not None else None,
        summary_file=Path(summary) if summary else None,
    )


def _estimator(problems: Problems, raw: dict[str, Any]) -> EstimatorSettings:
    known = {f.name for f in fields(EstimatorSettings)}
    r = TableReader.section(problems, raw, "estimator", known)
    d = EstimatorSettings()
    precisions = sorted(MATMUL_PRECISIONS)
    default_precision = r.get("default_precision", str, d.default_precision, f"one of {precisions}")
    if default_precision not in MATMUL_PRECISIONS:
        problems.add("estimator.default_precision", f"one of {precisions}")
        default_precision = d.default_precision
    undeclared = r.get("undeclared_precisions", list, list(d.undeclared_precisions),
                       f"a non-empty list of {precisions}")
    if not undeclared or any(p not in MATMUL_PRECISIONS for p in undeclared):
        problems.add("estimator.undeclared_precisions", f"a non-empty list of {precisions}")
        undeclared = list(d.undeclared_precisions)

    def fraction(key: str, default: float) -> float:
        value = r.get(key, (int, float), default, "a number between 0 and 1")
        if not 0 <= value <= 1:
            problems.add(f"estimator.{key}", "a number between 0 and 1")
            return default
        return float(value)

    unc = fraction("tensor_activity_uncertainty", d.tensor_activity_uncertainty)
    eff = fraction("utilization_efficiency", d.utilization_efficiency)
    eff_low = fraction("utilization_efficiency_low", d.utilization_efficiency_low)
    if eff_low > eff:
        problems.add("estimator.utilization_efficiency_low",
                     "a number not above estimator.utilization_efficiency")
    max_gap = r.get("max_gap_s", (int, float), d.max_gap_s, "a number of seconds > 0")
    if max_gap <= 0:
        problems.add("estimator.max_gap_s", "a number of seconds > 0")
        max_gap = d.max_gap_s
    return EstimatorSettings(
        default_precision=default_precision,
        undeclared_precisions=tuple(undeclared),
        tensor_activity_uncertainty=unc,
        utilization_efficiency=eff,
        utilization_efficiency_low=eff_low,
        max_gap_s=float(max_gap),
    )


def _sim(problems: Problems, raw: dict[str, Any]) -> SimSettings:
    known = {f.name for f in fields(SimSettings)}
    r = TableReader.section(problems, raw, "sim", known)
    table = r.table
    d = SimSettings()
    scenario = r.get("scenario", str, d.scenario, f"one of {sorted(SCENARIOS)}")
    if scenario not in SCENARIOS:
        problems.add("sim.scenario", f"one of {sorted(SCENARIOS)}")
        scenario = d.scenario
    gpus = r.get("gpus", int, d.gpus, "an integer between 1 and 64")
    if not 1 <= gpus <= 64:
        problems.add("sim.gpus", "an integer between 1 and 64")
        gpus = d.gpus
    gpu_model = r.get("gpu_model", str, d.gpu_model, "a key of the GPU spec table")
    seed = r.get("seed", int, d.seed, "an integer")
    virtual_time = r.get("virtual_time", bool, d.virtual_time, "true or false")
    time_scale = r.get("time_scale", (int, float), d.time_scale,
                       "a number >= 0 (0: as fast as possible)")
    if time_scale < 0:
        problems.add("sim.time_scale", "a number >= 0 (0: as fast as possible)")
        time_scale = d.time_scale
    elif time_scale != 1.0 and not virtual_time:
        problems.add("sim.time_scale", "to be left at 1 unless sim.virtual_time = true")
    overrides = table.get("workload", {})
    if not isinstance(overrides, dict):
        problems.add("sim.workload", "a table of workload parameters")
        overrides = {}
    workload = workload_from_table(SCENARIOS[scenario], overrides, problems, "sim.workload")
    epoch = r.get("epoch_unix_s", (int, float), None, "a wall-clock time in seconds since 1970")
    jobs = None
    if "jobs" in table:
        if isinstance(table["jobs"], list):
            jobs = parse_sim_jobs(table["jobs"], problems, "sim.jobs")
        else:
            problems.add("sim.jobs", "an array of [[sim.jobs]] tables")
    return SimSettings(scenario=scenario, gpus=gpus, gpu_model=gpu_model, seed=seed,
                       virtual_time=virtual_time, time_scale=float(time_scale),
                       epoch_unix_s=float(epoch) if epoch is not None else None,
                       workload=workload, jobs=jobs)


def _relative(base: Path, value: str) -> Path:
    return Path(value) if Path(value).is_absolute() else base / value


def _web(problems: Problems, raw: dict[str, Any], base: Path) -> WebSettings:
    r = TableReader.section(problems, raw, "web", {"config_file"})
    value = r.get("config_file", str, None, "the path of a web-config YAML file")
    if value is None:
        return WebSettings()
    path = _relative(base, value)
    if not path.is_file():
        problems.add("web.config_file", f"an existing web-config file (not found: {path})")
    return WebSettings(path)


def _textfile(problems: Problems, raw: dict[str, Any], base: Path) -> TextfileSettings:
    from exporters.textfile import textfile_path_problem

    r = TableReader.section(problems, raw, "textfile", {"path", "every_s"})
    d = TextfileSettings()
    value = r.get("path", str, None, "a file path ending in .prom")
    every = r.get("every_s", (int, float), d.every_s, "a number of seconds > 0")
    if every <= 0:
        problems.add("textfile.every_s", "a number of seconds > 0")
        every = d.every_s
    if value is None:
        return TextfileSettings(every_s=float(every))
    path = _relative(base, value)
    problem = textfile_path_problem(path)
    if problem:
        problems.add("textfile.path", problem)
    return TextfileSettings(path, float(every))


def parse_config(raw: dict[str, Any], path: Path | None = None) -> Config:
    """Validate a parsed TOML document.

    Raises:
        ConfigError: naming the file and every bad key with what was expected.
    """
    problems = Problems(path or Path("<config>"))
    check_keys(problems, raw, {"agent", "estimator", "attribution", "models", "sim", "thresholds",
                               "notify", "web", "textfile"})
    base = path.parent if path else Path.cwd()
    config = Config(
        path=path,
        agent=_agent(problems, raw),
        estimator=_estimator(problems, raw),
        attribution=parse_attribution_config(raw, problems),
        models=parse_models(raw, problems),
        sim=_sim(problems, raw),
        thresholds=parse_threshold_settings(raw, problems),
        notify=parse_notify_config(raw, problems, base),
        web=_web(problems, raw, base),
        textfile=_textfile(problems, raw, base),
    )
    problems.raise_if_any()
    return config


def load_config(path: Path | None) -> Config:
    """Read and validate a config file; None gives the defaults.

    Raises:
        ConfigError: for a missing or unreadable file, bad TOML, or bad values.
    """
    if path is None:
        return parse_config({})
    raw = read_toml(path, "an existing, readable config file")
    return parse_config(raw, path)
