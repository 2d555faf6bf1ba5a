"""Textfile output for node_exporter: atomic, durable, .prom only, no timestamps."""

from __future__ import annotations

import logging
import os
import shutil
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from exporters.collector import FlopledgerCollector
from exporters.textfile import TextfileWriter, textfile_path_problem, write_textfile
from tests.exposition import sample_snapshot


def registry() -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(FlopledgerCollector(sample_snapshot))
    return reg


class Stamped(Collector):
    """A collector that (wrongly, for a textfile) sets a client-side timestamp."""

    def collect(self) -> Iterator[Metric]:
        g = GaugeMetricFamily("stamped_value", "A value with a timestamp.")
        g.add_metric([], 42.0, timestamp=1.7e9)
        yield g


def samples(path: Path) -> dict[str, float]:
    out = {}
    for family in text_string_to_metric_families(path.read_text()):
        for s in family.samples:
            out[s.name + str(sorted(s.labels.items()))] = s.value
    return out


def test_writes_the_exposition_world_readable_with_no_leftovers(tmp_path: Path) -> None:
    path = tmp_path / "flopledger.prom"
    write_textfile(registry(), path)
    got = samples(path)
    gpu0 = str(sorted({"gpu": "0", "uuid": "GPU-00000000-0000-0000-0000-000000000000"}.items()))
    assert got["flopledger_gpu_flop_total" + gpu0] == 1.0e19
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # node_exporter runs as another user
    assert sorted(p.name for p in tmp_path.iterdir()) == ["flopledger.prom"]
    write_textfile(registry(), str(path))  # rewriting in place works (str paths too)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["flopledger.prom"]


@pytest.mark.parametrize("name", ["flopledger.txt", "flopledger.prom.tmp", "flopledger"])
def test_only_prom_files(tmp_path: Path, name: str) -> None:
    with pytest.raises(ValueError, match=r"\.prom"):
        write_textfile(registry(), tmp_path / name)
    with pytest.raises(ValueError, match=r"\.prom"):
        TextfileWriter(registry(), tmp_path / name, 15)


def test_timestamps_are_removed(tmp_path: Path) -> None:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(Stamped())
    path = tmp_path / "stamped.prom"
    write_textfile(reg, path)
    lines = [line for line in path.read_text().splitlines() if not line.startswith("#")]
    assert lines == ["stamped_value 42.0"]


def test_temp_file_is_hidden_and_not_prom_and_everything_is_synced(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    replaced: list[tuple[str, str]] = []
    synced: list[bool] = []  # True for a directory
    real_replace, real_fsync = os.replace, os.fsync

    def spy_replace(src: str | Path, dst: str | Path) -> None:
        replaced.append((Path(src).name, Path(dst).name))
        real_replace(src, dst)

    def spy_fsync(fd: int) -> None:
        synced.append(stat.S_ISDIR(os.fstat(fd).st_mode))
        real_fsync(fd)

    monkeypatch.setattr(os, "replace", spy_replace)
    monkeypatch.setattr(os, "fsync", spy_fsync)
    write_textfile(registry(), tmp_path / "flopledger.prom")
    [(src, dst)] = replaced
    assert dst == "flopledger.prom"
    # node_exporter reads only *.prom: a half-written temp file must never match.
    assert src.startswith(".")
    assert not src.endswith(".prom")
    assert synced == [False, True]  # the file, then its directory (the rename)


def test_failed_write_leaves_the_old_file_and_no_temp_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "flopledger.prom"
    path.write_text("# previous\n")

    def broken_fsync(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="No space"):
        write_textfile(registry(), path)
    assert path.read_text() == "# previous\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["flopledger.prom"]


def test_writer_keeps_its_pace_and_survives_failures(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    directory = tmp_path / "textfile"
    directory.mkdir()
    writer = TextfileWriter(registry(), directory / "flopledger.prom", every_s=10)
    assert writer.maybe_write(100.0)
    assert not writer.maybe_write(105.0)
    assert not writer.maybe_write(109.999)
    assert writer.maybe_write(110.0)
    assert writer.writes == 2
    shutil.rmtree(directory)
    with caplog.at_level(logging.ERROR):
        assert not writer.maybe_write(120.0)
        assert not writer.maybe_write(125.0)  # not yet due: no retry on every tick
        assert not writer.maybe_write(130.0)
    assert writer.failures == 2
    assert writer.last_error is not None
    assert "FileNotFoundError" in writer.last_error
    assert len([r for r in caplog.records if r.levelno == logging.ERROR]) == 1  # logged once
    directory.mkdir()
    assert writer.write_now()
    assert writer.last_error is None
    assert (directory / "flopledger.prom").is_file()


def test_writer_rejects_a_non_positive_period(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="every_s"):
        TextfileWriter(registry(), tmp_path / "f.prom", 0)


def test_start_time_check_says_what_is_expected(tmp_path: Path) -> None:
    assert textfile_path_problem(tmp_path / "flopledger.prom") is None
    problem = textfile_path_problem(tmp_path / "flopledger.txt")
    assert problem is not None
    assert ".prom" in problem
    problem = textfile_path_problem(tmp_path / "missing" / "flopledger.prom")
    assert problem is not None
    assert "existing directory" in problem


@pytest.mark.skipif(shutil.which("promtool") is None,
                    reason="promtool missing: `make test` installs Debian's prometheus")
def test_promtool_accepts_the_textfile(tmp_path: Path) -> None:
    path = tmp_path / "flopledger.prom"
    write_textfile(registry(), path)
    result = subprocess.run(["promtool", "check", "metrics"], input=path.read_text(),
                            text=True, capture_output=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
