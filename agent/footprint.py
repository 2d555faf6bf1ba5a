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
import sys
from pathlib import Path

log = logging.getLogger(__name__)

MADV_PAGEOUT = 21  # <linux/mman.h>, since Linux 5.4
LLVM_LIBRARY = "libllvmlite"


def mappings_of(library: str, maps: Path = Path("/proc/self/maps")) -> list[tuple[int, int]]:
    """(start, end) of every mapping of a file whose name starts with ``library``."""
    out: list[tuple[int, int]] = []
    try:
        text = maps.read_text()
    except OSError:
        return out
    for line in text.splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and Path(fields[5].strip()).name.startswith(library):
            start, end = (int(x, 16) for x in fields[0].split("-"))
            out.append((start, end))
    return out


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
