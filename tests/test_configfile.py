"""The one table reader: typed values, unknown keys, every problem kept."""

from __future__ import annotations

from agent.configfile import Problems, TableReader, check_keys


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
