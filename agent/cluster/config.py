"""The cluster service's TOML configuration, validated at start with every problem at once.

Example (``configs/cluster.example.toml`` has every key)::

    [cluster]
    url = "postgresql://flopledger@db.example:5432/flopledger?sslmode=verify-full"
    password_file = "/etc/flopledger/pg.password"   # or password_env = "FLOPLEDGER_PG"
    listen = "0.0.0.0:9948"
    evaluate_s = 30

    [thresholds]      # as in the agent's config (evaluate_every_s aside)
    [models.NAME]     # as in the agent's config
    [[notify.webhook]]  # as in the agent's config
    [web]             # as in the agent's config: TLS, client certificates, basic auth
    config_file = "/etc/flopledger/web.yml"

``[thresholds]``, ``[models.*]``, ``[notify]`` and ``[web]`` are read by the agent's own parsers, so
a setting means the same on a node and on the cluster. How often the cluster evaluates
is ``cluster.evaluate_s``; the agent's ``thresholds.evaluate_every_s`` is refused here
rather than silently ignored.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.compliance.lineage import ModelInfo, parse_models
from agent.compliance.thresholds import ThresholdSettings, parse_threshold_settings
from agent.config import MAX_DECLARED_FLOP, WebSettings, parse_listen, parse_web_settings
from agent.configfile import (
    Problems,
    TableReader,
    check_keys,
    drop_bad_values,
    is_number,
    range_text,
    read_toml,
)
from agent.ledger.pg_query import url_problem
from agent.notify.config import NotifySettings, parse_notify_config

__all__ = ["DEFAULT_EVALUATE_S", "DEFAULT_LISTEN", "ClusterConfig", "load_cluster_config",
           "parse_cluster_config"]

DEFAULT_LISTEN = "0.0.0.0:9948"
DEFAULT_EVALUATE_S = 30.0
# A pass reads every run's totals and, on the leader, every compute record: more often
# than twice a second is no use; less often than hourly, a deadline day could slip.
MIN_EVALUATE_S = 0.5
MAX_EVALUATE_S = 3600.0
TABLES = ("cluster", "thresholds", "models", "notify", "web")
CLUSTER_KEYS = ("url", "password_file", "password_env", "listen", "evaluate_s",
                "thresholds_file")


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    """Everything the cluster service reads from its config file.

    Attributes:
        url: the store, ``postgresql://user@host:port/db?...`` (no password in it).
        password_file, password_env: where the store's password is (at most one).
        thresholds_file: the regimes (None: the bundled ``agent/data/thresholds.toml``).
    """

    path: Path
    url: str
    password_file: Path | None = None
    password_env: str | None = None
    listen_host: str = "0.0.0.0"
    listen_port: int = 9948
    evaluate_s: float = DEFAULT_EVALUATE_S
    thresholds_file: Path | None = None
    thresholds: ThresholdSettings = field(default_factory=ThresholdSettings)
    models: dict[str, ModelInfo] = field(default_factory=dict)
    notify: NotifySettings = field(default_factory=NotifySettings)
    web: WebSettings = field(default_factory=WebSettings)


def _relative(base: Path, value: str) -> Path:
    return Path(value) if Path(value).is_absolute() else base / value


def _env_name(value: str) -> bool:
    return (value.isascii() and bool(value) and not value[0].isdigit()
            and value.replace("_", "").isalnum())


def _cluster(problems: Problems, raw: dict[str, Any], base: Path) -> dict[str, Any]:
    r = TableReader.section(problems, raw, "cluster", CLUSTER_KEYS)
    out: dict[str, Any] = {}
    if "cluster" not in raw:
        problems.add("cluster", "a [cluster] table with the store's url")
    elif "url" not in r.table:
        r.add("url", "the store's postgresql:// URL (postgresql://user@host:5432/db)")
    url = r.get("url", str, None, "a postgresql:// URL (postgresql://user@host:5432/db)")
    if url is not None:
        problem = url_problem(url)
        if problem is not None:
            r.add("url", f"a usable postgresql:// URL ({problem})")
        else:
            out["url"] = url
    password_file = r.path("password_file", "the path of a file holding the password")
    password_env = r.get("password_env", str, None, "the name of an environment variable")
    if password_file is not None and password_env is not None:
        r.add("password_env", "not to be set together with cluster.password_file")
    elif password_file is not None:
        path = _relative(base, password_file)
        if not path.is_file():
            r.add("password_file", f"an existing file holding the password (not found: {path})")
        else:
            out["password_file"] = path
    elif password_env is not None:
        if not _env_name(password_env):
            r.add("password_env", "the name of an environment variable (letters, digits, '_')")
        else:
            out["password_env"] = password_env
    listen = r.get("listen", str, DEFAULT_LISTEN, "\"host:port\"")
    parsed = parse_listen(listen)
    if parsed is None:
        r.add("listen", "\"host:port\" with a port between 0 and 65535")
    else:
        out["listen_host"], out["listen_port"] = parsed
    out["evaluate_s"] = float(r.number("evaluate_s", DEFAULT_EVALUATE_S, MIN_EVALUATE_S,
                                       MAX_EVALUATE_S, what="a number of seconds"))
    thresholds_file = r.path("thresholds_file", "a path to a thresholds table")
    if thresholds_file is not None:
        out["thresholds_file"] = _relative(base, thresholds_file)
    return out


def _declared_ceilings(problems: Problems, raw: dict[str, Any]) -> None:
    """The agent config's ceiling on declared compute (its parser checks type and sign)."""
    models = raw.get("models")
    for name, spec in (models.items() if isinstance(models, dict) else ()):
        declared = spec.get("declared_flop") if isinstance(spec, dict) else None
        values = declared.values() if isinstance(declared, dict) else [declared]
        if any(is_number(v) and v > MAX_DECLARED_FLOP for v in values):
            problems.add(f"models.{name}.declared_flop",
                         range_text("a number of FLOP", 0, MAX_DECLARED_FLOP))


def parse_cluster_config(raw: dict[str, Any], path: Path) -> ClusterConfig:
    """Validate a parsed TOML document.

    Raises:
        ConfigError: naming the file and every bad key with what was expected.
    """
    problems = Problems(path)
    raw = drop_bad_values(problems, raw)
    check_keys(problems, raw, TABLES)
    base = path.parent
    cluster = _cluster(problems, raw, base)
    thresholds = raw.get("thresholds")
    if isinstance(thresholds, dict) and "evaluate_every_s" in thresholds:
        problems.add("thresholds.evaluate_every_s",
                     "to be left out: the cluster evaluates every cluster.evaluate_s")
        raw = {**raw, "thresholds": {k: v for k, v in thresholds.items()
                                     if k != "evaluate_every_s"}}
    settings = parse_threshold_settings(raw, problems)
    models = parse_models(raw, problems)
    _declared_ceilings(problems, raw)
    notify = parse_notify_config(raw, problems, base)
    web = parse_web_settings(problems, raw, base)
    problems.raise_if_any()
    return ClusterConfig(path=path, thresholds=settings, models=models, notify=notify,
                         web=web, **cluster)


def load_cluster_config(path: Path) -> ClusterConfig:
    """Read and validate the cluster service's config file.

    Raises:
        ConfigError: for a missing or unreadable file, bad TOML, or bad values.
    """
    raw = read_toml(path, "an existing, readable config file")
    return parse_cluster_config(raw, path)

