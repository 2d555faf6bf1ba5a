"""Reading the client spool: every file the agent must refuse is renamed and named in one
ERROR line, links and special files are never followed, accepted files stay pending until
consumed or released (docs/client-spool.md)."""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.sources.spool import (
    MAX_ERRORS_PER_POLL,
    MAX_MESSAGE_BYTES,
    SpoolError,
    SpoolReader,
    parse_message,
)
from tests.sources.spool_messages import (
    BAD_MESSAGES,
    ID,
    T_NS,
    encode,
    file_name,
    message,
    write,
)

LOGGER = "agent.sources.spool"


@pytest.fixture
def spool(tmp_path: Path) -> Path:
    directory = tmp_path / "spool"
    directory.mkdir()
    return directory


def errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == LOGGER and r.levelno >= logging.ERROR]


def assert_refused_once(reader: SpoolReader, spool: Path, name: str, why: str,
                        caplog: pytest.LogCaptureFixture) -> None:
    """One poll refuses ``name``: nothing returned, the file renamed, one ERROR line
    naming it and ``why``; the next poll neither reads nor logs it again."""
    caplog.set_level(logging.INFO, logger=LOGGER)
    assert reader.poll() == []
    assert reader.rejected == 1
    lines = errors(caplog)
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"spool file {spool / name}: ")
    assert why in lines[0]
    assert lines[0].endswith(f"; renamed {name}.rejected, not counted")
    assert (spool / f"{name}.rejected").exists() or (spool / f"{name}.rejected").is_symlink()
    assert not os.path.lexists(spool / name)
    assert reader.poll() == []
    assert reader.rejected == 1
    assert len(errors(caplog)) == 1


@pytest.mark.parametrize(("content", "why"), [(c, w) for _, c, w in BAD_MESSAGES],
                         ids=[case for case, _, _ in BAD_MESSAGES])
def test_a_bad_file_is_renamed_and_named_once(spool: Path, content: bytes, why: str,
                                              caplog: pytest.LogCaptureFixture) -> None:
    name = file_name("progress")
    write(spool, name, content)
    assert_refused_once(SpoolReader(spool), spool, name, why, caplog)


def test_each_bad_case_is_refused_by_the_parser_alone() -> None:
    # The same cases, without the file system: the parser names each problem.
    for case, content, why in BAD_MESSAGES:
        if len(content) > MAX_MESSAGE_BYTES:
            continue  # refused before parsing, from the file's size
        with pytest.raises(SpoolError) as caught:
            parse_message(Path("x.json"), content)
        assert why in str(caught.value), case


def test_the_parser_bounds_what_it_is_given() -> None:
    with pytest.raises(SpoolError, match="at most 65536"):
        parse_message(Path("x.json"), encode(message(host="h" * MAX_MESSAGE_BYTES)))


@pytest.mark.parametrize("kind", ["attach", "declare", "progress", "attestation", "gate"])
def test_a_valid_message_of_each_kind(spool: Path, kind: str) -> None:
    path = write(spool, file_name(kind), message(kind))
    (msg,) = SpoolReader(spool).poll()
    assert (msg.path, msg.kind, msg.id, msg.time_ns, msg.pid, msg.pid_ns, msg.host) == (
        path, kind, ID, T_NS, 4242, 4026531836, "node-1")
    assert msg.run == ("run-a" if kind in ("attach", "declare", "progress") else "")
    assert msg.uid == os.getuid()
    expected = {k: v for k, v in message(kind).items() if k in {
        "declaration", "tokens", "steps", "scope", "final", "model", "evaluation", "result",
        "score", "evidence", "by", "decision"}}
    assert msg.body == expected


def test_optional_fields_take_their_defaults(spool: Path) -> None:
    doc = message("attach")
    for key in ("rank", "world_size", "pid_ns"):
        del doc[key]
    write(spool, file_name("attach"), doc)
    write(spool, file_name("gate"), message("gate", run=""))
    attach, gate = SpoolReader(spool).poll()
    assert (attach.rank, attach.world_size, attach.pid_ns) == (0, 1, None)
    assert gate.run == ""


@pytest.mark.parametrize("evidence", ["s3://bucket/evals/1.json", "/srv/evals/1.pdf",
                                      "urn:uuid:1234"])
def test_evidence_is_a_uri_or_an_absolute_path(evidence: str) -> None:
    msg = parse_message(Path("a.json"), encode(message("attestation", evidence=evidence,
                                                       result="pass", score=None)))
    assert msg.body["evidence"] == evidence


def test_what_the_trainer_client_writes_is_accepted(spool: Path) -> None:
    client = pytest.importorskip("flopledger_client")
    with client.Run("run-a", rank=0, world_size=2, spool_dir=spool, report_every_s=0) as run:
        run.declare(model="llama-x", base_models=["base-a"], category="pre-training",
                    precision="bf16", recompute="selective", recompute_factor=1.2,
                    planned_tokens=1e12, planned_steps=1000, end_time=1.8e9,
                    duration_s=86400, params=7e9, layers=32, d_model=4096, context=4096,
                    gpus=64)
        run.report(tokens=1000, steps=10)
    reader = SpoolReader(spool)
    got = reader.poll()
    assert reader.rejected == 0
    assert {m.kind for m in got} == {"attach", "declare", "progress"}
    assert {m.run for m in got} == {"run-a"}
    (declare,) = [m for m in got if m.kind == "declare"]
    assert declare.body["declaration"]["plan"]["params"] == 7e9
    last = max((m for m in got if m.kind == "progress"), key=lambda m: m.time_ns)
    assert (last.body["tokens"], last.body["final"], last.world_size) == (1000, True, 2)


@pytest.mark.parametrize(("kind", "body"), [
    ("attestation", {"model": "llama-x", "evaluation": "cyber", "result": "pass",
                     "score": None, "evidence": "https://e.example/1", "by": "alice"}),
    ("gate", {"model": "llama-x", "decision": {"model": "llama-x", "exit_code": 0,
                                               "policy_sha256": "ab" * 32}}),
])
def test_what_attest_and_gate_write_is_accepted(spool: Path, kind: str,
                                                body: dict[str, object]) -> None:
    from agent.cli.release import spool_message, write_spool

    write_spool(spool, spool_message(kind, ID, T_NS, body))
    reader = SpoolReader(spool)
    (msg,) = reader.poll()
    assert reader.rejected == 0
    assert (msg.kind, msg.id, msg.body) == (kind, ID, body)


def test_files_are_read_in_name_order_and_only_json_names(spool: Path) -> None:
    names = [file_name("progress", T_NS + i) for i in (3, 1, 2)]
    for i, name in enumerate(names):
        write(spool, name, message(message_id=f"{i:032x}"))
    write(spool, ".progress-1-2-3.json", message())  # a writer's temporary name
    write(spool, "progress-1-2-3.json.tmp", message())
    write(spool, "old.json.rejected", message())
    got = SpoolReader(spool).poll()
    assert [m.path.name for m in got] == sorted(names)


def test_a_poll_reads_at_most_its_bound(spool: Path) -> None:
    names = sorted(file_name("progress", T_NS + i) for i in range(5))
    for name in names:
        write(spool, name, message())
    reader = SpoolReader(spool, max_files_per_poll=3)
    assert [m.path.name for m in reader.poll()] == names[:3]
    assert [m.path.name for m in reader.poll()] == names[3:]
    assert reader.poll() == []
    assert reader.pending == 5


def test_pending_messages_are_not_read_again_until_released(spool: Path) -> None:
    write(spool, file_name("progress"), message())
    reader = SpoolReader(spool)
    (msg,) = reader.poll()
    assert reader.poll() == []
    reader.release([msg])
    assert reader.poll() == [msg]


def test_consumed_deletes_the_files_and_forgets_them(spool: Path) -> None:
    a = write(spool, file_name("progress", T_NS + 1), message())
    b = write(spool, file_name("progress", T_NS + 2), message())
    reader = SpoolReader(spool)
    first, second = reader.poll()
    b.unlink()  # the writer replaced its progress file meanwhile: nothing to delete
    reader.consumed([first, second])
    assert not a.exists()
    assert reader.pending == 0
    # A new file under a consumed name is a new message.
    write(spool, a.name, message())
    assert [m.path for m in reader.poll()] == [a]


def test_a_symbolic_link_is_refused_and_its_target_untouched(
        spool: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    target = write(tmp_path, "elsewhere.json", message())
    name = file_name("progress")
    (spool / name).symlink_to(target)
    assert_refused_once(SpoolReader(spool), spool, name, "is a symbolic link", caplog)
    assert target.read_bytes() == encode(message())
    assert (spool / f"{name}.rejected").is_symlink()


def test_a_fifo_is_refused_without_blocking(spool: Path,
                                            caplog: pytest.LogCaptureFixture) -> None:
    name = file_name("progress")
    os.mkfifo(spool / name)
    assert_refused_once(SpoolReader(spool), spool, name, "is not a regular file", caplog)


def test_a_directory_is_refused(spool: Path, caplog: pytest.LogCaptureFixture) -> None:
    name = file_name("progress")
    (spool / name).mkdir()
    assert_refused_once(SpoolReader(spool), spool, name, "is not a regular file", caplog)


def test_a_hard_link_is_refused(spool: Path, tmp_path: Path,
                                caplog: pytest.LogCaptureFixture) -> None:
    other = write(tmp_path, "other.json", message())
    name = file_name("progress")
    os.link(other, spool / name)
    assert_refused_once(SpoolReader(spool), spool, name, "has 2 hard links", caplog)
    assert other.read_bytes() == encode(message())


def test_a_file_name_with_control_characters_is_refused_and_shown_escaped(
        spool: Path, caplog: pytest.LogCaptureFixture) -> None:
    name = "progress-1\nFORGED-2.json"
    write(spool, name, message())
    caplog.set_level(logging.INFO, logger=LOGGER)
    assert SpoolReader(spool).poll() == []
    (line,) = errors(caplog)
    assert "\n" not in line
    assert "progress-1\\nFORGED-2.json" in line
    assert "its name holds control characters" in line
    assert (spool / f"{name}.rejected").exists()


def test_a_file_that_vanishes_after_the_listing_is_skipped_silently(
        spool: Path, caplog: pytest.LogCaptureFixture) -> None:
    gone = write(spool, file_name("progress", T_NS + 1), message())
    kept = write(spool, file_name("progress", T_NS + 2), message())

    class RacingReader(SpoolReader):
        # The writer deletes its older progress file between the listing and the read.
        def _listing(self, dir_fd: int) -> list[str]:
            names = super()._listing(dir_fd)
            gone.unlink()
            return names

    caplog.set_level(logging.DEBUG, logger=LOGGER)
    reader = RacingReader(spool)
    assert [m.path for m in reader.poll()] == [kept]
    assert reader.rejected == 0
    assert [r for r in caplog.records if r.name == LOGGER] == []


def test_a_flood_of_bad_files_is_summed_up_after_a_bound(
        spool: Path, caplog: pytest.LogCaptureFixture) -> None:
    count = MAX_ERRORS_PER_POLL + 3
    for i in range(count):
        write(spool, file_name("progress", T_NS + i), b"junk")
    caplog.set_level(logging.INFO, logger=LOGGER)
    reader = SpoolReader(spool)
    assert reader.poll() == []
    lines = errors(caplog)
    assert len(lines) == MAX_ERRORS_PER_POLL + 1
    assert lines[-1] == (f"spool directory {spool}: 3 more files refused in this poll and "
                         "renamed *.rejected, not counted")
    assert reader.rejected == count
    assert len(list(spool.glob("*.json.rejected"))) == count


def test_a_file_over_the_size_limit_is_refused_by_its_size(
        spool: Path, caplog: pytest.LogCaptureFixture) -> None:
    name = file_name("progress")
    write(spool, name, encode(message()) + b" " * MAX_MESSAGE_BYTES)
    assert_refused_once(SpoolReader(spool), spool, name,
                        f"is {len(encode(message())) + MAX_MESSAGE_BYTES} bytes; at most "
                        f"{MAX_MESSAGE_BYTES} are read", caplog)


def test_exactly_the_size_limit_is_read(spool: Path) -> None:
    body = encode(message())
    write(spool, file_name("progress"), body + b" " * (MAX_MESSAGE_BYTES - len(body)))
    assert len(SpoolReader(spool).poll()) == 1


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


@pytest.mark.usefixtures("umask_022")
def test_ensure_creates_the_directory_with_mode_1733(tmp_path: Path) -> None:
    directory = tmp_path / "run" / "flopledger" / "spool"
    assert SpoolReader(directory).ensure() is None
    assert stat.S_IMODE(directory.stat().st_mode) == 0o1733


def test_ensure_leaves_an_existing_directory_as_it_is(
        spool: Path, caplog: pytest.LogCaptureFixture) -> None:
    spool.chmod(0o750)
    caplog.set_level(logging.INFO, logger=LOGGER)
    assert SpoolReader(spool).ensure() is None
    assert stat.S_IMODE(spool.stat().st_mode) == 0o750
    assert caplog.records == []


def test_ensure_warns_once_about_a_world_writable_directory_without_sticky_bit(
        spool: Path, caplog: pytest.LogCaptureFixture) -> None:
    spool.chmod(0o777)
    reader = SpoolReader(spool)
    caplog.set_level(logging.INFO, logger=LOGGER)
    assert reader.ensure() is None
    assert reader.ensure() is None
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "writable by everyone without the sticky bit (mode 777)" in warnings[0]
    assert stat.S_IMODE(spool.stat().st_mode) == 0o777


def test_ensure_names_a_path_that_is_not_a_directory(tmp_path: Path) -> None:
    path = tmp_path / "spool"
    path.write_text("")
    assert SpoolReader(path).ensure() == f"spool directory {path}: exists and is not a directory"


def test_poll_of_a_missing_directory_warns_once_and_reads_nothing(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    reader = SpoolReader(tmp_path / "absent")
    caplog.set_level(logging.INFO, logger=LOGGER)
    assert reader.poll() == []
    assert reader.poll() == []
    (line,) = [r.getMessage() for r in caplog.records]
    assert line.startswith(f"spool directory {tmp_path / 'absent'}: cannot open it")
