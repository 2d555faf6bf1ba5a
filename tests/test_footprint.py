"""Giving back LLVM's pages once the kernels are loaded (agent/footprint.py): the
mappings are found by name, a process that asks gets the pages it holds alone reclaimed
and its kernels keep working, and the running agent holds almost none of the library."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent.footprint import LLVM_LIBRARY, mappings_of, resident_bytes
from tests.agentproc import agent, wait_for

MAPS = """\
55d0c0a00000-55d0c0a21000 r--p 00000000 08:01 1234  /usr/bin/python3.11
7f0000000000-7f0000100000 r--p 00000000 08:01 99  /venv/lib/llvmlite/binding/libllvmlite.so
7f0000100000-7f0004000000 r-xp 00100000 08:01 99  /venv/lib/llvmlite/binding/libllvmlite.so
7f0004000000-7f0004001000 rw-p 00000000 00:00 0
7f0005000000-7f0005002000 r--p 00000000 08:01 77  /tmp/not-libllvmlite.so
7f0006000000-7f0006001000 r--p 00000000 08:01 78  /srv/libllvmlite (deleted)
"""


def test_mappings_are_found_by_file_name(tmp_path: Path) -> None:
    maps = tmp_path / "maps"
    maps.write_text(MAPS)
    assert mappings_of(LLVM_LIBRARY, maps) == [
        (0x7F0000000000, 0x7F0000100000), (0x7F0000100000, 0x7F0004000000),
        (0x7F0006000000, 0x7F0006001000)]
    assert mappings_of("libnothing", maps) == []
    assert mappings_of(LLVM_LIBRARY, tmp_path / "missing") == []


CHILD = """
import json, numpy as np
from agent.accounting.integrate import group_by_gpu, warm_up
from agent.footprint import release_library_pages, resident_bytes
warm_up()
gpu = np.array([2, 0, 1, 0, 2, 1], np.int64)
before = resident_bytes(private=True)
first = [a.tolist() for a in group_by_gpu(gpu, 3)]
advised = release_library_pages()
after = resident_bytes(private=True)
again = [a.tolist() for a in group_by_gpu(gpu, 3)]
print(json.dumps({"before": before, "advised": advised, "after": after,
                  "same": first == again, "later": resident_bytes(private=True)}))
"""


def test_a_process_gives_llvms_pages_back_and_its_kernels_still_run() -> None:
    out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True,
                         check=True, timeout=300)
    r = json.loads(out.stdout)
    if r["advised"] == 0:
        pytest.skip("this kernel has no MADV_PAGEOUT (Linux 5.4)")
    # Whatever of the library this process held alone is given back (how much that is
    # depends on which other processes map it at the moment).
    assert r["after"] < 4 * 2**20
    assert r["same"]
    assert r["later"] < 4 * 2**20  # running a loaded kernel needs none of it


def test_the_running_agent_holds_little_of_llvm(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(f"""
[agent]
interval_s = 0.1
source = "simulated"
state_dir = "{tmp_path / 'var'}"
checkpoint_s = 1
[sim]
gpus = 8
""")
    with agent(config) as (proc, url):
        wait_for(url, proc)
        time.sleep(4)  # ticks, integrations and checkpoints after the release
        resident = resident_bytes(pid=proc.pid, private=True)
        assert proc.poll() is None
    if resident > 4 * 2**20 and not _pageout_supported():
        pytest.skip("this kernel has no MADV_PAGEOUT (Linux 5.4)")
    assert resident < 4 * 2**20


def _pageout_supported() -> bool:
    out = subprocess.run(
        [sys.executable, "-c", "import numba; from agent.footprint import "
         "release_library_pages as r; print(r())"],
        capture_output=True, text=True, check=True, timeout=300)
    return int(out.stdout) > 0
