"""Giving back the pages the agent needed only to start: LLVM's.

numba loads the agent's cached kernels through LLVM (``libllvmlite``), and doing so
touches some 70 MiB of that library: about 40% of the agent's resident memory. Once the
kernels are loaded, the live path runs their machine code and never LLVM (measured: the
pages stay out while the agent ticks, integrates, checkpoints and answers scrapes;
``make bench`` reports what of the library is resident).
The pages are clean and file-backed, so the kernel could drop them any time; left
alone, it does so only under memory pressure, and until then they count in the agent's
footprint on every GPU node. ``MADV_PAGEOUT`` (Linux 5.4) asks for them to be reclaimed
now. The kernel reclaims only pages no other process maps: where another numba process
(a trainer) shares them, those stay, shared. Should LLVM be needed again (a kernel
compiled for types it has not seen), its pages are read back from the file like any
other: nothing can break, only wait.
"""

from __future__ import annotations

import ctypes
import logging
import re
import sys
from pathlib import Path

log = logging.getLogger(__name__)

MADV_PAGEOUT = 21  # <linux/mman.h>, since Linux 5.4
LLVM_LIBRARY = "libllvmlite"


# A mapping's line in /proc/PID/maps, and the head of its entry in /proc/PID/smaps:
# range, permissions, offset, device, inode, then the file (if any).
_MAPPING = re.compile(r"([0-9a-f]+)-([0-9a-f]+) \S+ \S+ \S+ \S+ *(.*)")


def _library_mapping(line: str, library: str) -> tuple[int, int] | None:
    """(start, end) if ``line`` heads a mapping of a file whose name starts with
    ``library``, else None."""
    m = _MAPPING.match(line)
    if m is None or not Path(m[3].strip()).name.startswith(library):
        return None
    return int(m[1], 16), int(m[2], 16)


def mappings_of(library: str, maps: Path = Path("/proc/self/maps")) -> list[tuple[int, int]]:
    """(start, end) of every mapping of a file whose name starts with ``library``."""
    try:
        text = maps.read_text()
    except OSError:
        return []
    return [r for line in text.splitlines() if (r := _library_mapping(line, library))]


def resident_bytes(library: str = LLVM_LIBRARY, pid: int | str = "self",
                   private: bool = False) -> int:
    """Resident bytes of process ``pid``'s mappings of ``library`` (smaps' ``Rss``); with
    ``private``, only pages no other process maps (``Private_Clean`` + ``Private_Dirty``),
    the only ones the kernel can reclaim for this process. 0 if smaps cannot be read."""
    fields = ("Private_Clean:", "Private_Dirty:") if private else ("Rss:",)
    total = 0
    inside = False
    try:
        text = Path(f"/proc/{pid}/smaps").read_text()
    except OSError:
        return 0
    for line in text.splitlines():
        if _MAPPING.match(line):
            inside = _library_mapping(line, library) is not None
        elif inside and line.startswith(fields):
            total += int(line.split()[1]) * 1024
    return total


def release_library_pages(library: str = LLVM_LIBRARY) -> int:
    """Ask the kernel to reclaim this process's resident pages of ``library``; the
    bytes of mappings it took the advice for (0 off Linux, or on a kernel without
    ``MADV_PAGEOUT``, where nothing changes)."""
    if not sys.platform.startswith("linux"):
        return 0
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        madvise = libc.madvise
    except (OSError, AttributeError):
        return 0
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    madvise.restype = ctypes.c_int
    advised = 0
    for start, end in mappings_of(library):
        if madvise(start, end - start, MADV_PAGEOUT) == 0:
            advised += end - start
        else:
            log.debug("madvise(MADV_PAGEOUT) on %s: errno %d", library, ctypes.get_errno())
            break
    if advised:
        log.debug("asked the kernel to reclaim %d MiB of %s mappings (start-up only)",
                  advised >> 20, library)
    return advised
