"""Run and model names: what may be claimed, and how names are written out safely."""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.accounting.names import (
    MAX_FILE_STEM_CHARS,
    MAX_NAME_CHARS,
    UNATTRIBUTED_RUN_ID,
    file_stem,
    header_value,
    is_reserved_run_id,
    name_problem,
    printable,
    run_id_problem,
)

SAFE_STEM = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")
# Characters that start a new line, or reorder or hide text, for a log reader or terminal.
LINE_BREAKERS = ["\n", "\r", "\x0b", "\x0c", "\x1c", "\x85", "\u2028", "\u2029"]


@pytest.mark.parametrize("name", [
    "llama-70b", "slurm-4242", "k8s-team/pod-7", "run with spaces", "модель-1", "a" * 200,
    "../../etc/x", "x.y_z+1",
])
def test_ordinary_names_pass(name: str) -> None:
    assert name_problem(name) is None
    assert run_id_problem(name) is None


@pytest.mark.parametrize(("name", "why"), [
    ("", "empty"),
    ("a" * (MAX_NAME_CHARS + 1), "longer than 200"),
    ("evil\nINFO forged line", "control character \\n"),
    ("bell\x07", "\\x07"),
    ("esc\x1b[31m", "\\x1b"),
    ("del\x7f", "\\x7f"),
    ("rtl\u202eexe.txt", "\\u202e"),
    ("line\u2028sep", "\\u2028"),
    (" padded", "blank"),
])
def test_bad_names_are_refused_with_the_reason(name: str, why: str) -> None:
    problem = name_problem(name)
    assert problem is not None
    assert why in problem
    assert run_id_problem(name) == problem


@pytest.mark.parametrize("run_id", ["unattributed", "Unattributed", "UNATTRIBUTED"])
def test_the_unattributed_run_id_is_reserved_in_any_case(run_id: str) -> None:
    assert is_reserved_run_id(run_id)
    problem = run_id_problem(run_id)
    assert problem is not None
    assert "reserved" in problem
    # Only a run id is reserved: a model may be called so.
    assert name_problem(run_id) is None


def test_printable_escapes_every_line_breaker_and_keeps_the_rest() -> None:
    for c in LINE_BREAKERS:
        text = printable(f"a{c}b")
        assert len(text.splitlines()) == 1, repr(text)
        assert c not in text
    assert printable("evil\nINFO x") == "evil\\nINFO x"
    assert printable("ok/ü name") == "ok/ü name"
    assert printable("x" * 300, 20) == "x" * 17 + "..."


def test_file_stem_keeps_safe_names_and_confines_the_rest() -> None:
    assert file_stem("run-1") == "run-1"
    assert file_stem("slurm-4242.a_b") == "slurm-4242.a_b"
    for name in ("../../etc/x", "/etc/passwd", "..", ".", "a/b", "a\nb", "", "-rf",
                 "~root", "con:1", "a\\b", "x" * 5000, "модель"):
        stem = file_stem(name)
        assert SAFE_STEM.fullmatch(stem), (name, stem)
        assert stem not in (".", "..")
        assert len(stem) <= MAX_FILE_STEM_CHARS + 11
        assert Path(stem).name == stem
        assert file_stem(name) == stem  # stable: the same name, the same file


def test_names_that_clean_up_alike_get_different_files() -> None:
    stems = {file_stem(n) for n in ("a/b", "a_b", "a b", "a\nb", "a:b")}
    assert len(stems) == 5
    assert file_stem("x" * 100) != file_stem("x" * 101)


def test_header_value_is_printable_ascii_on_one_line() -> None:
    value = header_value("run\r\nX-Injected: yes ü \\")
    assert "\r" not in value
    assert "\n" not in value
    assert value == "run\\r\\nX-Injected: yes \\xfc \\\\"
    assert len(header_value("y" * 1000)) == MAX_NAME_CHARS


@given(st.text(max_size=300))
def test_any_text_comes_out_safe(text: str) -> None:
    line = printable(text)
    assert not [c for c in line if unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp", "Cs",
                                                                "Cn")]
    assert len(line.splitlines()) <= 1
    assert SAFE_STEM.fullmatch(file_stem(text))
    assert all(" " <= c <= "~" for c in header_value(text))


def test_the_reserved_id_is_what_unattributed_runs_are_called() -> None:
    from agent.accounting.runs import UNATTRIBUTED

    assert UNATTRIBUTED.run_id == UNATTRIBUTED_RUN_ID
