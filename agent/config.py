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
from agent.accounting.coefficients import EstimatorSettings
from agent.accounting.runs import CATEGORIES
from agent.compliance.lineage import ModelInfo, parse_models
from agent.compliance.thresholds import ThresholdSettings, parse_threshold_settings
from agent.configfile import (
    ConfigError,
    Problems,
    TableReader,
    check_keys,
    drop_bad_values,
    is_number,
    path_problem,
    range_text,
    read_toml,
)
from agent.notify.config import NotifySettings, parse_notify_config
from agent.sources.scenarios import SCENARIOS, SimJob, Workload, parse_sim_jobs, workload_from_table
from agent.sources.specs import MATMUL_PRECISIONS

__all__ = ["CATEGORIES", "AgentConfigError", "Config", "ConfigError", "interval_problem",
           "load_config", "parse_config", "parse_listen"]

SOURCES = ("auto", "nvml", "simulated")
# Ranges of the numbers: wide enough for every real deployment, narrow enough that a
# typo (a missing decimal point, ms for s) or a value that would overflow a nanosecond
# count is refused at start rather than at the first tick.
MIN_INTERVAL_S = 0.1  # NVML GPM needs 100 ms between samples
MAX_INTERVAL_S = 3600.0
MAX_TICKS = 100_000
MIN_CHECKPOINT_S = 0.5
DAY_S = 86400.0
YEAR_S = 366 * DAY_S
MAX_EXIT_AFTER_S = 100 * YEAR_S
MAX_SIM_GPUS = 64
MAX_TIME_SCALE = 1e6
LAST_EPOCH_UNIX_S = 4102444800.0  # 2100-01-01
MAX_SEED = 2**63 - 1
MAX_CLOCK_MHZ = 10000.0
MAX_DECLARED_FLOP = 1e40

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
class ClientSettings:
    """``[client]``: the spool directory trainers declare their runs through (see
    docs/client-spool.md), and how often a run's reported progress becomes a record.
    ``spool_dir`` None: no spool is read."""

    spool_dir: Path | None = Path("/run/flopledger/spool")
    progress_record_s: float = 60.0


@dataclass(frozen=True, slots=True)
class ClusterSettings:
    """``[cluster]``: the PostgreSQL store this node's sealed records and signed heads
    are shipped to (None: no replication). The password comes from ``password_file`` or
    the environment variable ``password_env``, never from the URL; TLS options go in
    the URL's query (``?sslmode=verify-full&sslrootcert=...``)."""

    url: str | None = None
    password_file: Path | None = None
    password_env: str | None = None
    replicate_s: float = 5.0
    batch_records: int = 5000


@dataclass(frozen=True, slots=True)
class AgentSettings:
    interval_s: float = 1.0
    integrate_every: int = 20
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
    client: ClientSettings = field(default_factory=ClientSettings)
    cluster: ClusterSettings = field(default_factory=ClusterSettings)


class AgentConfigError(ConfigError):
    """The agent config's problems, with what could be read of it (``partial``: bad
    values replaced by defaults), so the files it names can be checked in the same
    pass (see :func:`agent.preflight.with_other_files`)."""

    def __init__(self, path: Path, problems: list[tuple[str, str]], partial: Config) -> None:
        super().__init__(path, problems)
        self.partial = partial


def parse_listen(value: str) -> tuple[str, int] | None:
    """``host:port``, ``[v6]:port`` or ``:port`` -> (host, port); None if malformed.

    Only the form is checked here; :mod:`agent.preflight` resolves and test-binds it.
    """
    host, sep, port_text = value.rpartition(":")
    if not sep or not (port_text.isascii() and port_text.isdigit()) or len(port_text) > 5:
        return None
    port = int(port_text)
    host = host.strip()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if port > 65535 or any(c.isspace() or not c.isprintable() for c in host):
        return None
    return host or "0.0.0.0", port


def interval_problem(interval_s: float, checkpoint_s: float, max_gap_s: float) -> str | None:
    """What is wrong with a sampling interval given the other settings, or None.

    An interval longer than ``estimator.max_gap_s`` makes every interval a gap (its
    FLOP only in the high bound), and a checkpoint cannot come more often than a tick.
    """
    if interval_s > max_gap_s:
        return (f"a number of seconds <= estimator.max_gap_s ({max_gap_s:g}); a longer "
                f"interval would count every interval as a gap")
    if interval_s > checkpoint_s:
        return f"a number of seconds <= agent.checkpoint_s ({checkpoint_s:g})"
    return None


def _agent(problems: Problems, raw: dict[str, Any]) -> AgentSettings:
    known = {f.name for f in fields(AgentSettings)} - {"listen_host", "listen_port"} | {"listen"}
    r = TableReader.section(problems, raw, "agent", known)
    d = AgentSettings()
    seconds = "a number of seconds"
    interval = r.number("interval_s", d.interval_s, MIN_INTERVAL_S, MAX_INTERVAL_S, what=seconds)
    every = r.number("integrate_every", d.integrate_every, 1, MAX_TICKS,
                     what="an integer number of ticks", integer=True)
    source = r.get("source", str, d.source, f"one of {SOURCES}")
    if source not in SOURCES:
        problems.add("agent.source", f"one of {SOURCES}")
        source = d.source
    listen = r.get("listen", str, f"{d.listen_host}:{d.listen_port}", "\"host:port\"")
    parsed = parse_listen(listen)
    if parsed is None:
        problems.add("agent.listen", "\"host:port\" with a port between 0 and 65535")
        parsed = (d.listen_host, d.listen_port)
    state_dir = r.path("state_dir", "a directory path") or str(d.state_dir)
    node = r.get("node", str, d.node, "a node name")
    if not node or len(node) > 253 or any(c.isspace() or c == "/" or not c.isprintable()
                                          for c in node):
        problems.add("agent.node", "a non-empty node name of at most 253 printable "
                     "characters, without spaces or '/'")
        node = d.node
    checkpoint = r.number("checkpoint_s", d.checkpoint_s, MIN_CHECKPOINT_S, DAY_S, what=seconds)
    record_s = r.number("record_s", d.record_s, MIN_CHECKPOINT_S, DAY_S, what=seconds)
    if record_s < checkpoint:
        problems.add("agent.record_s", f"a number of seconds >= agent.checkpoint_s "
                     f"({checkpoint:g}): a record closes at a checkpoint")
        record_s = max(d.record_s, checkpoint)
    export_for = r.number("export_runs_for_s", d.export_runs_for_s, 0, YEAR_S, what=seconds)
    spec_file = r.path("spec_file", "a path to a GPU spec table")
    thresholds_file = r.path("thresholds_file", "a path to a thresholds table")
    exit_after = r.number("exit_after_s", None, 0, MAX_EXIT_AFTER_S, what=seconds, above=True)
    summary = r.path("summary_file", "a file path")
    return AgentSettings(
        interval_s=float(interval),
        integrate_every=every,
        source=source,
        listen_host=parsed[0],
        listen_port=parsed[1],
        state_dir=Path(state_dir),
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
    if not undeclared or any(not isinstance(p, str) or p not in MATMUL_PRECISIONS
                             for p in undeclared):
        problems.add("estimator.undeclared_precisions", f"a non-empty list of {precisions}")
        undeclared = list(d.undeclared_precisions)

    def fraction(key: str, default: float) -> float:
        return float(r.number(key, default, 0, 1, what="a fraction"))

    unc = fraction("tensor_activity_uncertainty", d.tensor_activity_uncertainty)
    eff = fraction("utilization_efficiency", d.utilization_efficiency)
    eff_low = fraction("utilization_efficiency_low", d.utilization_efficiency_low)
    if eff_low > eff:
        problems.add("estimator.utilization_efficiency_low",
                     "a number not above estimator.utilization_efficiency")
    max_gap = r.number("max_gap_s", d.max_gap_s, 0, DAY_S, what="a number of seconds",
                       above=True)
    # Kept well below 1: high divides by (1 - counter_error_low).
    counter_low = float(r.number("counter_error_low", d.counter_error_low, 0, 0.5,
                                 what="a fraction"))
    counter_high = fraction("counter_error_high", d.counter_error_high)
    recompute_max = float(r.number("undeclared_recompute_max", d.undeclared_recompute_max,
                                   1, 4, what="hardware FLOP per model FLOP"))
    non_model = fraction("non_model_share_max", d.non_model_share_max)
    return EstimatorSettings(
        default_precision=default_precision,
        undeclared_precisions=tuple(undeclared),
        tensor_activity_uncertainty=unc,
        utilization_efficiency=eff,
        utilization_efficiency_low=eff_low,
        max_gap_s=float(max_gap),
        counter_error_low=counter_low,
        counter_error_high=counter_high,
        undeclared_recompute_max=recompute_max,
        non_model_share_max=non_model,
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
    gpus = r.number("gpus", d.gpus, 1, MAX_SIM_GPUS, what="an integer", integer=True)
    gpu_model = r.get("gpu_model", str, d.gpu_model, "a key of the GPU spec table")
    seed = r.number("seed", d.seed, 0, MAX_SEED, what="an integer", integer=True)
    virtual_time = r.get("virtual_time", bool, d.virtual_time, "true or false")
    time_scale = r.number("time_scale", d.time_scale, 0, MAX_TIME_SCALE,
                          what="a number (0: as fast as possible)")
    if time_scale != 1.0 and not virtual_time:
        problems.add("sim.time_scale", "to be left at 1 unless sim.virtual_time = true")
    overrides = table.get("workload", {})
    if not isinstance(overrides, dict):
        problems.add("sim.workload", "a table of workload parameters")
        overrides = {}
    workload = workload_from_table(SCENARIOS[scenario], overrides, problems, "sim.workload")
    _workload_ceilings(problems, workload, overrides)
    epoch = r.number("epoch_unix_s", None, 0, LAST_EPOCH_UNIX_S,
                     what="a wall-clock time in seconds since 1970")
    jobs = None
    if "jobs" in table:
        if isinstance(table["jobs"], list):
            jobs = parse_sim_jobs(table["jobs"], problems, "sim.jobs")
            _job_ceilings(problems, table["jobs"], gpus)
        else:
            problems.add("sim.jobs", "an array of [[sim.jobs]] tables")
    return SimSettings(scenario=scenario, gpus=gpus, gpu_model=gpu_model, seed=seed,
                       virtual_time=virtual_time, time_scale=float(time_scale),
                       epoch_unix_s=float(epoch) if epoch is not None else None,
                       workload=workload, jobs=jobs)


# The simulator's own checks (agent/sources/scenarios.py) cover types, signs and
# fractions; these ceilings keep a simulated stretch from overflowing a nanosecond
# count, and are checked here where the whole agent config is read.
def _workload_ceilings(problems: Problems, workload: Workload, overrides: dict[str, Any]) -> None:
    for f in fields(Workload):
        if f.name not in overrides:
            continue
        value = getattr(workload, f.name)
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if f.name.endswith("_steps"):
            low, high, what = 0.0, float(MAX_TICKS * 10), "an integer number of steps"
        elif f.name.endswith("_s"):
            low, high, what = 0.0, DAY_S, "a number of seconds"
        elif f.name.endswith("_mhz"):
            low, high, what = 0.0, MAX_CLOCK_MHZ, "a number of MHz"
        elif f.name.endswith("_pct"):
            low, high, what = 0.0, 100.0, "a percentage"
        else:
            low, high, what = 0.0, 1.0, "a fraction"
        # Below ``low`` the simulator's own check has already said so.
        if value > high or (isinstance(value, int) and value < low):
            problems.add(f"sim.workload.{f.name}", range_text(what, low, high))


def _job_ceilings(problems: Problems, jobs: list[Any], n_gpus: int) -> None:
    for i, job in enumerate(jobs):
        if not isinstance(job, dict):
            continue
        for key in ("start_s", "end_s"):
            value = job.get(key)
            if is_number(value) and value > 10 * YEAR_S:
                problems.add(f"sim.jobs[{i}].{key}",
                             range_text("a number of seconds", 0, 10 * YEAR_S))
        gpus = job.get("gpus")
        if isinstance(gpus, list) and any(is_number(g) and g >= n_gpus for g in gpus):
            problems.add(f"sim.jobs[{i}].gpus",
                         f"GPU indices below sim.gpus ({n_gpus}: 0..{n_gpus - 1})")


def _other_ceilings(problems: Problems, raw: dict[str, Any]) -> None:
    """Ceilings on numbers whose parsers live in lower layers (which check type and
    sign): above them a value overflows a nanosecond count or means nothing."""
    attribution = raw.get("attribution")
    if isinstance(attribution, dict):
        refresh = attribution.get("refresh_s")
        if is_number(refresh) and refresh > DAY_S:
            problems.add("attribution.refresh_s",
                         range_text("a number of seconds", 0, DAY_S, above=True))
    models = raw.get("models")
    for name, spec in (models.items() if isinstance(models, dict) else ()):
        declared = spec.get("declared_flop") if isinstance(spec, dict) else None
        values = declared.values() if isinstance(declared, dict) else [declared]
        if any(is_number(v) and v > MAX_DECLARED_FLOP for v in values):
            problems.add(f"models.{name}.declared_flop",
                         range_text("a number of FLOP", 0, MAX_DECLARED_FLOP))


def _relative(base: Path, value: str) -> Path:
    return Path(value) if Path(value).is_absolute() else base / value


def parse_web_settings(problems: Problems, raw: dict[str, Any], base: Path) -> WebSettings:
    """``[web]``, shared with the cluster service's config."""
    r = TableReader.section(problems, raw, "web", {"config_file"})
    value = r.path("config_file", "the path of a web-config YAML file")
    if value is None:
        return WebSettings()
    path = _relative(base, value)
    if not path.is_file():
        problems.add("web.config_file", f"an existing web-config file (not found: {path})")
    return WebSettings(path)


def _textfile(problems: Problems, raw: dict[str, Any], base: Path) -> TextfileSettings:
    r = TableReader.section(problems, raw, "textfile", {"path", "every_s"})
    d = TextfileSettings()
    value = r.path("path", "a file path ending in .prom")
    every = r.number("every_s", d.every_s, 0, DAY_S, what="a number of seconds", above=True)
    if value is None:
        return TextfileSettings(every_s=float(every))
    # The writer's module loads the Prometheus client: only for a config that has one.
    from exporters.textfile import textfile_path_problem

    path = _relative(base, value)
    problem = textfile_path_problem(path)
    if problem:
        problems.add("textfile.path", problem)
    return TextfileSettings(path, float(every))


def _client(problems: Problems, raw: dict[str, Any]) -> ClientSettings:
    r = TableReader.section(problems, raw, "client", {"spool_dir", "progress_record_s"})
    d = ClientSettings()
    spool = r.get("spool_dir", str, str(d.spool_dir), "a directory path, or \"\" for no spool")
    every = r.number("progress_record_s", d.progress_record_s, MIN_CHECKPOINT_S, DAY_S,
                     what="a number of seconds")
    if spool and (problem := path_problem(spool)) is not None:
        problems.add("client.spool_dir", problem)
        spool = str(d.spool_dir)
    # Relative to the working directory, as agent.state_dir is.
    return ClientSettings(Path(spool) if spool else None, float(every))


def _cluster(problems: Problems, raw: dict[str, Any], base: Path) -> ClusterSettings:
    r = TableReader.section(problems, raw, "cluster", {"url", "password_file", "password_env",
                                                       "replicate_s", "batch_records"})
    d = ClusterSettings()
    url = r.get("url", str, None, "a postgresql:// URL")
    if url is not None:
        scheme, sep, rest = url.partition("://")
        if scheme not in ("postgresql", "postgres") or not sep or not rest:
            problems.add("cluster.url", "a postgresql:// URL (postgresql://user@host:5432/db)")
            url = None
        elif "@" in rest.split("/", 1)[0] and ":" in rest.split("@", 1)[0]:
            # A password in the URL would end up in logs and process listings.
            problems.add("cluster.url", "a URL without a password (give it with "
                         "cluster.password_file or cluster.password_env)")
            url = None
    password_file = r.path("password_file", "the path of a file holding the password")
    password_env = r.get("password_env", str, None, "the name of an environment variable")
    if password_env is not None and not password_env.replace("_", "").isalnum():
        problems.add("cluster.password_env", "the name of an environment variable")
        password_env = None
    every = r.number("replicate_s", d.replicate_s, MIN_CHECKPOINT_S, DAY_S,
                     what="a number of seconds")
    batch = r.number("batch_records", d.batch_records, 1, 1_000_000,
                     what="an integer number of records", integer=True)
    return ClusterSettings(url, _relative(base, password_file) if password_file else None,
                           password_env, float(every), batch)


def parse_config(raw: dict[str, Any], path: Path | None = None) -> Config:
    """Validate a parsed TOML document.

    Raises:
        ConfigError: naming the file and every bad key with what was expected.
    """
    problems = Problems(path or Path("<config>"))
    raw = drop_bad_values(problems, raw)
    check_keys(problems, raw, {"agent", "estimator", "attribution", "models", "sim", "thresholds",
                               "notify", "web", "textfile", "client", "cluster"})
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
        web=parse_web_settings(problems, raw, base),
        textfile=_textfile(problems, raw, base),
        client=_client(problems, raw),
        cluster=_cluster(problems, raw, base),
    )
    _other_ceilings(problems, raw)
    a = config.agent
    if not problems.has("agent.interval_s") and not problems.has("agent.checkpoint_s"):
        wrong = interval_problem(a.interval_s, a.checkpoint_s, config.estimator.max_gap_s)
        if wrong is not None:
            problems.add("agent.interval_s", wrong)
    if problems:
        raise AgentConfigError(problems.path, problems.items, config)
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
