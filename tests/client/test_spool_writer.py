"""The spool's files as docs/client-spool.md defines them: names, fields, atomic writes,
the size limit."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from flopledger_client import (
    DEFAULT_SPOOL_DIR,
    MAX_MESSAGE_BYTES,
    SPOOL_FORMAT,
    MessageTooLargeError,
    SpoolWriter,
    make_message,
)
from flopledger_client import spool as spool_module

# <kind>-<time_ns>-<pid>-<8 random hex digits>.json
NAME = re.compile(r"^(attach|declare|progress|attestation|gate)-(\d+)-(\d+)-[0-9a-f]{8}\.json$")
COMMON_FIELDS = {"format", "kind", "id", "time_ns", "pid", "pid_ns", "host", "run", "rank",
                 "world_size"}


def agent_would_read(directory: Path) -> list[str]:
    """The names the agent reads: ending in .json, not starting with a dot."""
    return sorted(n for n in os.listdir(directory) if n.endswith(".json") and not n.startswith("."))


@pytest.fixture
def spool(tmp_path: Path) -> Path:
    directory = tmp_path / "spool"
    directory.mkdir()
    return directory


def test_message_has_the_common_fields_of_this_process() -> None:
    message = make_message("attach", run="r1", rank=2, world_size=4)

    assert set(message) == COMMON_FIELDS
    assert message["format"] == SPOOL_FORMAT == "flopledger-spool-1"
    assert message["kind"] == "attach"
    assert isinstance(message["id"], str)
    assert re.fullmatch(r"[0-9a-f]{32}", message["id"])
    assert message["pid"] == os.getpid()
    assert message["pid_ns"] == os.stat("/proc/self/ns/pid").st_ino
    assert message["host"] == socket.gethostname()
    assert (message["run"], message["rank"], message["world_size"]) == ("r1", 2, 4)
    assert isinstance(message["time_ns"], int)
    assert message["time_ns"] > 1_600_000_000 * 10**9


def test_each_message_gets_its_own_id() -> None:
    ids = {make_message("attach", run="r")["id"] for _ in range(100)}
    assert len(ids) == 100


def test_message_without_run_leaves_the_field_out() -> None:
    assert "run" not in make_message("gate", run=None, decision={})


def test_unknown_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="kind"):
        make_message("attached", run="r")


def test_write_names_the_file_by_kind_time_and_pid(spool: Path) -> None:
    message = make_message("progress", run="r", tokens=5, steps=1, scope="rank", final=False)

    path = SpoolWriter(spool).write(message)

    match = NAME.match(path.name)
    assert match, path.name
    assert match.group(1) == "progress"
    assert int(match.group(2)) == message["time_ns"]
    assert int(match.group(3)) == message["pid"]
    assert path.parent == spool
    assert json.loads(path.read_bytes()) == message


def test_write_leaves_only_the_message_no_temporary_file(spool: Path) -> None:
    writer = SpoolWriter(spool)
    paths = [writer.write(make_message("attach", run=f"r{i}")) for i in range(5)]

    assert sorted(os.listdir(spool)) == sorted(p.name for p in paths)
    assert agent_would_read(spool) == sorted(p.name for p in paths)


def test_file_is_readable_by_the_agent_whatever_the_umask(spool: Path) -> None:
    old = os.umask(0o077)
    try:
        path = SpoolWriter(spool).write(make_message("attach", run="r"))
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644


def test_crash_between_write_and_rename_leaves_nothing_the_agent_reads(spool: Path) -> None:
    # A real process dies at the moment between the fsync'd temporary file and the
    # rename that would publish it.
    script = textwrap.dedent(f"""
        import os
        from flopledger_client import SpoolWriter, make_message
        os.rename = lambda *args: os._exit(9)
        SpoolWriter({str(spool)!r}).write(make_message("attach", run="r"))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60,
                          check=False)

    assert done.returncode == 9, done.stderr
    left = os.listdir(spool)
    assert len(left) == 1
    assert left[0].startswith(".attach-")
    assert left[0].endswith(".json.tmp")
    assert agent_would_read(spool) == []


def test_failed_rename_removes_the_temporary_file(spool: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    # The target name taken by a directory: rename(2) itself fails.
    monkeypatch.setattr(spool_module, "file_name", lambda *args: "attach-1-2-0000abcd.json")
    (spool / "attach-1-2-0000abcd.json").mkdir()

    with pytest.raises(IsADirectoryError):
        SpoolWriter(spool).write(make_message("attach", run="r"))

    assert os.listdir(spool) == ["attach-1-2-0000abcd.json"]


def test_missing_spool_is_an_oserror_and_is_not_created(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        SpoolWriter(tmp_path / "absent").write(make_message("attach", run="r"))
    assert not (tmp_path / "absent").exists()


def test_spool_dir_argument_then_environment_then_default(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FLOPLEDGER_SPOOL_DIR", raising=False)
    assert SpoolWriter().directory == DEFAULT_SPOOL_DIR == Path("/run/flopledger/spool")
    monkeypatch.setenv("FLOPLEDGER_SPOOL_DIR", str(tmp_path / "env"))
    assert SpoolWriter().directory == tmp_path / "env"
    assert SpoolWriter(tmp_path / "arg").directory == tmp_path / "arg"


def test_remove_ignores_a_file_already_consumed(spool: Path) -> None:
    writer = SpoolWriter(spool)
    path = writer.write(make_message("attach", run="r"))
    writer.remove(path)
    writer.remove(path)
    assert os.listdir(spool) == []


def _message_of_size(size: int, text_char: str = "x") -> dict[str, object]:
    """A declare message whose encoding takes exactly ``size`` bytes."""
    message = make_message("declare", run="r", declaration={"model": ""})
    base = len(spool_module.encode_message(message))
    per_char = len(text_char.encode())
    assert (size - base) % per_char == 0
    message["declaration"] = {"model": text_char * ((size - base) // per_char)}
    return message


def test_message_at_the_limit_is_written(spool: Path) -> None:
    message = _message_of_size(MAX_MESSAGE_BYTES)
    path = SpoolWriter(spool).write(message)
    assert path.stat().st_size == MAX_MESSAGE_BYTES == 65536


def test_limit_counts_utf8_bytes_not_characters(spool: Path) -> None:
    message = _message_of_size(MAX_MESSAGE_BYTES + 1, "x")
    declaration = message["declaration"]
    assert isinstance(declaration, dict)
    # Half as many two-byte characters: the same bytes, half the characters.
    declaration["model"] = "é" * ((len(declaration["model"]) + 1) // 2)
    with pytest.raises(MessageTooLargeError):
        SpoolWriter(spool).write(message)


def test_message_over_the_limit_names_the_field_and_writes_nothing(spool: Path) -> None:
    message = make_message("declare", run="r", declaration={
        "model": "m", "base_models": ["b" * 200] * 400, "plan": {"params": 1}})

    with pytest.raises(MessageTooLargeError, match=r"^declaration\.base_models: .*65536"):
        SpoolWriter(spool).write(message)

    assert os.listdir(spool) == []


def test_message_one_byte_over_the_limit_is_refused(spool: Path) -> None:
    with pytest.raises(MessageTooLargeError, match=r"^declaration\.model: "):
        SpoolWriter(spool).write(_message_of_size(MAX_MESSAGE_BYTES + 1))
    assert os.listdir(spool) == []
