"""Fuzzing the config readers: random values for the known keys of the agent config,
the thresholds file, the GPU spec table and the web config, and random bytes as a
TOML file. The only outcomes are a parsed config whose every number is finite, or a
ConfigError; any other exception fails.

Each document starts from the bundled file (so most of it is valid and the parser gets
deep) and has a few keys set to random values: edge numbers (NaN, inf, 1e308, 2**64),
strings with NUL or control characters, booleans, lists and tables where a scalar
belongs.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import math
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.accounting.attribution import _RULE_KEYS
from agent.accounting.estimate import EstimatorSettings
from agent.compliance.thresholds import Regime, ThresholdSettings, load_registry
from agent.config import AgentSettings, SimSettings, parse_config
from agent.configfile import ConfigError, bundled_config, read_toml
from agent.sources.scenarios import SimJob, Workload
from agent.sources.specs import PRECISIONS, load_spec_table
from exporters.web.config import parse_web_config
from tests.paths import REPO

FUZZ = settings(max_examples=200, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

Path_ = tuple[str | int, ...]
T = TypeVar("T")

# --- values ---------------------------------------------------------------------------

EDGE_NUMBERS = st.sampled_from([
    math.nan, math.inf, -math.inf, 0.0, -0.0, 5e-324, 0.05, 0.1, 1.0, 3600.0, 86400.0,
    1e15, 1e40, 1e300, 1.7976931348623157e308, -1.0, 0, 1, -1, 64, 65, 65535, 65536,
    2**31, 2**63 - 1, -(2**63), 2**64, 10**30])
TEXT = st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=12)
KNOWN_STRINGS = st.sampled_from([
    "", "bf16", "fp8", "simulated", "auto", "nvml", "127.0.0.1:0", "[::1]:0", ":0",
    "localhost", "pre-training", "h100_sxm", "high", "in-force", "gt", "ge", "model",
    "provider", "http://am.example:9093", "https://[::1]:99999", "http://[zz]/", "var",
    "/proc/x", "a\x00b", "TFLOPS", "989.4", "NaN", "-Infinity", "1e9999", "2024-13-40"])
SCALARS = st.one_of(EDGE_NUMBERS, st.floats(allow_nan=True, allow_infinity=True),
                    st.integers(min_value=-(2**70), max_value=2**70), st.booleans(), TEXT,
                    KNOWN_STRINGS)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.one_of(TEXT, KNOWN_STRINGS), inner, max_size=3),
    max_leaves=6)


def toml_string(s: str) -> str:
    out = ['"']
    for c in s:
        if c in '"\\':
            out.append("\\" + c)
        elif ord(c) < 0x20 or ord(c) == 0x7F:
            out.append(f"\\u{ord(c):04x}")
        else:
            out.append(c)
    out.append('"')
    return "".join(out)


def toml_value(value: Any) -> str:
    """A TOML value, inline (tables as inline tables)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return toml_string(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    assert isinstance(value, dict)
    return "{" + ", ".join(f"{toml_string(k)} = {toml_value(v)}" for k, v in value.items()) + "}"


def toml_document(doc: Mapping[str, Any]) -> str:
    return "".join(f"{toml_string(k)} = {toml_value(v)}\n" for k, v in doc.items())


def set_path(doc: dict[str, Any], path: Path_, value: Any) -> None:
    """Set ``doc[path]``, making (or replacing) the tables and arrays on the way."""
    node: Any = doc
    for step, following in itertools.pairwise(path):
        want: type = list if isinstance(following, int) else dict
        if isinstance(step, int):
            while len(node) <= step:
                node.append({} if want is dict else [])
            if not isinstance(node[step], want):
                node[step] = want()
        elif not isinstance(node.get(step), want):
            node[step] = want()
        node = node[step]
    last = path[-1]
    if isinstance(last, int):
        while len(node) <= last:
            node.append(None)
    node[last] = value


def mutated(base: Mapping[str, Any], paths: list[Path_]) -> st.SearchStrategy[dict[str, Any]]:
    """``base`` with one to four of ``paths`` set to random values."""

    def apply(changes: list[tuple[Path_, Any]]) -> dict[str, Any]:
        doc = copy.deepcopy(dict(base))
        for path, value in changes:
            set_path(doc, path, value)
        return doc

    changes = st.lists(st.tuples(st.sampled_from(paths), VALUES), min_size=1, max_size=4)
    return changes.map(apply)


def assert_finite(obj: Any, where: str = "config") -> None:
    """Every float reachable from a parsed config is finite: no NaN got through."""
    if isinstance(obj, float):
        assert math.isfinite(obj), where
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        for f in dataclasses.fields(obj):
            assert_finite(getattr(obj, f.name), f"{where}.{f.name}")
    elif isinstance(obj, Mapping):
        for k, v in obj.items():
            assert_finite(v, f"{where}.{k}")
    elif isinstance(obj, list | tuple):
        for i, v in enumerate(obj):
            assert_finite(v, f"{where}[{i}]")


def outcome(load: Callable[[], T]) -> T | ConfigError:
    """What ``load()`` returns, or the ConfigError it raises; anything else propagates
    and fails the test."""
    try:
        return load()
    except ConfigError as e:
        return e


def names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


# --- the agent config ------------------------------------------------------------------

AGENT_BASE = tomllib.loads((REPO / "configs" / "agent.example.toml").read_text())
AGENT_PATHS: list[Path_] = [
    *[("agent", k) for k in [*names(AgentSettings), "listen"] if not k.startswith("listen_")],
    *[("estimator", k) for k in names(EstimatorSettings)],
    *[("sim", k) for k in names(SimSettings)],
    *[("sim", "workload", k) for k in names(Workload)],
    *[("sim", "jobs", 0, k) for k in names(SimJob)],
    *[("thresholds", k) for k in names(ThresholdSettings)],
    ("attribution", "slurm_job_dir"), ("attribution", "refresh_s"),
    *[("attribution", "rules", 0, k) for k in sorted(_RULE_KEYS)],
    *[("models", "m", k) for k in ("base_models", "declared_flop", "role", "systemic_risk")],
    ("notify", "poll_s"),
    *[("notify", "alertmanager", 0, k) for k in ("name", "url", "resend_s", "timeout_s",
                                                 "generator_url")],
    *[("notify", "command", 0, k) for k in ("name", "argv", "timeout_s")],
    ("textfile", "every_s"), ("textfile", "path"), ("web", "config_file"),
    ("agent", "colour"), ("nonsense",), ("sim",), ("agent",),
]


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@FUZZ
@given(doc=mutated(AGENT_BASE, AGENT_PATHS))
def test_agent_config_parses_or_says_why(doc: dict[str, Any], fuzz_dir: Path) -> None:
    text = toml_document(doc)
    raw = tomllib.loads(text)
    config = outcome(lambda: parse_config(raw, fuzz_dir / "agent.toml"))
    if isinstance(config, ConfigError):
        assert config.problems, text
        return
    assert_finite(config)
    assert config.agent.interval_s <= config.estimator.max_gap_s


# --- the thresholds file and the spec table ---------------------------------------------

THRESHOLDS_BASE = tomllib.loads(bundled_config("thresholds.toml").read_text())
SCOPE = next(iter(THRESHOLDS_BASE["scopes"]))
REGIME = next(iter(THRESHOLDS_BASE["regimes"]))
THRESHOLD_PATHS: list[Path_] = [
    ("pricing", "usd_per_gpu_hour"), ("pricing",), ("pricing", "bogus"), ("scopes",),
    *[("scopes", SCOPE, k) for k in ("categories", "inherit", "description", "source")],
    *[("scopes", SCOPE, "categories", 0)],
    *[("regimes", REGIME, k) for k in names(Regime) if k != "key"],
    ("regimes", REGIME), ("regimes", "new"), ("regimes", "new", "threshold_flop"),
]


@FUZZ
@given(doc=mutated(THRESHOLDS_BASE, THRESHOLD_PATHS))
def test_thresholds_file_parses_or_says_why(doc: dict[str, Any], fuzz_dir: Path) -> None:
    path = fuzz_dir / "thresholds.toml"
    path.write_text(toml_document(doc))
    registry = outcome(lambda: load_registry(path))
    if isinstance(registry, ConfigError):
        assert registry.problems
        return
    assert_finite(registry)


SPECS_BASE = tomllib.loads(bundled_config("gpus.toml").read_text())
ROW = "h100_sxm"
SPEC_PATHS: list[Path_] = [
    *[("gpu", ROW, k) for k in ("name", "match", "architecture", "sm_count",
                                "max_sm_clock_mhz", "gpm", "sources", "datasheet",
                                "flop_per_clock_per_sm", "bogus")],
    ("gpu", ROW, "match", 0), ("gpu", ROW, "sources", 0), ("gpu",), ("gpu", ROW),
    *[("gpu", ROW, "flop_per_clock_per_sm", p) for p in (*PRECISIONS, "fp7")],
    *[("gpu", ROW, "datasheet", "bf16_tensor", k)
      for k in ("value", "unit", "clock_mhz", "sparse", "rel_tol", "bogus")],
    ("gpu", ROW, "datasheet", "fp8_tensor"), ("gpu", "new", "sm_count"),
]


@FUZZ
@given(doc=mutated(SPECS_BASE, SPEC_PATHS))
def test_spec_table_parses_or_says_why(doc: dict[str, Any], fuzz_dir: Path) -> None:
    path = fuzz_dir / "gpus.toml"
    path.write_text(toml_document(doc))
    table = outcome(lambda: load_spec_table(path))
    if isinstance(table, ConfigError):
        assert table.problems
        return
    assert_finite(table)
    for spec in table.specs.values():
        for peak in spec.datasheet:
            assert math.isfinite(peak.dense_flops)
            assert math.isfinite(peak.printed_tolerance_flops)


# --- the web config and the raw bytes of a file ------------------------------------------

WEB_PATHS: list[Path_] = [
    *[("tls_server_config", k) for k in ("cert_file", "key_file", "client_auth_type",
                                         "client_ca_file", "client_allowed_sans",
                                         "min_version", "max_version",
                                         "prefer_server_cipher_suites", "cipher_suites")],
    ("http_server_config", "headers", "X-Frame-Options"), ("http_server_config", "http2"),
    ("http_server_config", "headers"), ("basic_auth_users", "prometheus"),
    ("basic_auth_users",), ("rate_limit",), ("tls_server_config",),
]


@FUZZ
@given(doc=mutated({}, WEB_PATHS))
def test_web_config_parses_or_says_why(doc: dict[str, Any], fuzz_dir: Path) -> None:
    raw = yaml.safe_load(yaml.safe_dump(doc, allow_unicode=True))
    web = outcome(lambda: parse_web_config(raw, fuzz_dir / "web.yml"))
    if isinstance(web, ConfigError):
        assert web.problems


TOMLISH = st.lists(st.sampled_from([
    b"[agent]\n", b"interval_s = ", b"nan", b"1e400", b"\xff", b"[[", b"]]", b"= {", b"}",
    b'"\\u0000"', b"9" * 20, b"\n", b"[" * 50, b"x.y.z = 1\n", b"'''", b"\r\n"]),
    max_size=12).map(b"".join)


@FUZZ
@given(data=st.one_of(st.binary(max_size=200), TOMLISH))
def test_any_bytes_read_as_toml_or_say_why(data: bytes, fuzz_dir: Path) -> None:
    path = fuzz_dir / "any.toml"
    path.write_bytes(data)
    raw = outcome(lambda: read_toml(path))
    if isinstance(raw, ConfigError):
        assert raw.problems
        return
    config = outcome(lambda: parse_config(raw, path))
    if isinstance(config, ConfigError):
        assert config.problems
