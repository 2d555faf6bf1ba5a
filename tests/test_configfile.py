"""The one table reader: typed values, unknown keys, every problem kept."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from agent.configfile import (
    ConfigError,
    ConfigFilesError,
    ErrorCollector,
    Problems,
    TableReader,
    check_keys,
    drop_bad_values,
    in_range,
    range_text,
    read_toml,
)


def test_unknown_keys_are_named_with_what_is_known() -> None:
    problems = Problems("agent.toml")
    check_keys(problems, {"agent": {}, "agnet": {}}, {"agent", "sim"})
    check_keys(problems, {"poll_s": 1, "pol_s": 1}, ("poll_s", "webhook"), "notify")
    assert problems.items == [
        ("agnet", "one of the tables ['agent', 'sim']"),
        ("notify.pol_s", "one of the known keys ['poll_s', 'webhook']"),
    ]


def test_a_section_reads_typed_values_and_reports_the_rest() -> None:
    problems = Problems("agent.toml")
    raw = {"web": {"port": 80, "flag": 1, "colour": "red"}, "sim": 3}
    r = TableReader.section(problems, raw, "web", {"port", "flag", "name"})
    assert r.get("port", int, 0, "a port") == 80
    # A bool is never a number, and an int is not a bool.
    assert r.get("flag", bool, False, "true or false") is False
    assert r.get("name", str, "default", "a name") == "default"
    empty = TableReader.section(problems, raw, "sim", {"gpus"})
    assert empty.table == {}
    assert TableReader.section(problems, raw, "absent", set()).table == {}
    assert problems.items == [("web.colour", "one of the known keys ['flag', 'name', 'port']"),
                              ("web.flag", "true or false"), ("sim", "a table")]


@pytest.mark.parametrize(("value", "ok"), [
    (0.1, True), (3600, True), (1, True), (0.05, False), (3600.5, False),
    (math.nan, False), (math.inf, False), (-math.inf, False), (True, False), ("1", False),
    (None, False), ([1], False),
])
def test_in_range_refuses_nan_inf_bools_and_out_of_range(value: object, ok: bool) -> None:
    assert in_range(value, 0.1, 3600) is ok


def test_in_range_integer_and_open_bounds() -> None:
    assert in_range(5, 1, 10, integer=True)
    assert not in_range(5.0, 1, 10, integer=True)
    assert not in_range(0, 0, 1, above=True)
    assert in_range(1e-9, 0, 1, above=True)
    assert range_text("a number of seconds", 0.1, 3600) == "a number of seconds >= 0.1 and <= 3600"
    assert range_text("a number", 0, 1e40, above=True) == "a number > 0 and <= 1e+40"


def test_number_reads_a_range_and_states_it() -> None:
    problems = Problems("agent.toml")
    r = TableReader(problems, {"a": 5, "b": math.nan, "c": 1e9, "d": "5"}, "t", "abcde")
    assert r.number("a", 1, 0, 10) == 5
    assert r.number("b", 1, 0, 10) == 1
    assert r.number("c", 1, 0, 10, what="a number of seconds") == 1
    assert r.number("d", 1, 0, 10) == 1
    assert r.number("e", None, 0, 10) is None
    assert problems.items == [("t.b", "a number >= 0 and <= 10"),
                              ("t.c", "a number of seconds >= 0 and <= 10"),
                              ("t.d", "a number >= 0 and <= 10")]


def test_bad_values_are_dropped_and_named_once() -> None:
    problems = Problems("agent.toml")
    raw: dict[str, Any] = {"agent": {"interval_s": math.nan, "node": "a\0b", "ok": 1.5},
           "thresholds": {"levels": [0.5, math.inf]}, "big": 2**64,
           "sim": {"jobs": [{"start_s": -math.inf, "gpus": [0]}]}}
    clean = drop_bad_values(problems, raw)
    assert clean == {"agent": {"ok": 1.5}, "thresholds": {"levels": [0.5]},
                     "sim": {"jobs": [{"gpus": [0]}]}}
    assert [k for k, _ in problems.items] == [
        "agent.interval_s", "agent.node", "thresholds.levels[1]", "big", "sim.jobs[0].start_s"]
    assert raw["agent"]["interval_s"] != raw["agent"]["interval_s"]  # the input is untouched
    # A parser that then finds the key missing adds nothing to what was said.
    problems.add("agent.interval_s", "a number of seconds")
    problems.add("thresholds.levels", "a non-empty list")
    assert len(problems.items) == 5
    problems.add("thresholds.window_s", "a number of seconds")
    assert len(problems.items) == 6


@pytest.mark.parametrize(("content", "expected"), [
    (b'x = "\xff"\n', "valid TOML in UTF-8 (byte 5 is not UTF-8)"),
    (b"x = " + b"[" * 3000 + b"]" * 3000, "valid TOML nested less deeply"),
    (b"x = 1" + b"0" * 5000, "valid TOML (Exceeds the limit"),
    (b"[x\n", "valid TOML: "),
])
def test_read_toml_turns_every_parse_failure_into_a_config_error(
        tmp_path: Path, content: bytes, expected: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as e:
        read_toml(path)
    assert e.value.path == path
    assert e.value.problems[0][1].startswith(expected)


def test_a_directory_is_not_a_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="Is a directory"):
        read_toml(tmp_path, "a config file")


def test_the_collector_keeps_one_error_per_file() -> None:
    def fail(name: str) -> int:
        raise ConfigError(name, [("k", f"something in {name}")])

    errors = ErrorCollector()
    assert errors.attempt(lambda: 7) == 7
    assert errors.attempt(lambda: fail("a.toml")) is None
    with pytest.raises(ConfigError) as one:
        errors.raise_if_any()
    assert not isinstance(one.value, ConfigFilesError)
    errors.attempt(lambda: fail("b.toml"))
    with pytest.raises(ConfigFilesError) as many:
        errors.raise_if_any()
    assert [e.path.name for e in many.value.errors] == ["a.toml", "b.toml"]
    assert "a.toml: 1 problem(s)" in str(many.value)
    assert "b.toml: 1 problem(s)" in str(many.value)
    # Collected again, the files stay separate.
    def fail_twice() -> int:
        raise many.value

    again = ErrorCollector()
    again.attempt(fail_twice)
    assert len(again.errors) == 2
