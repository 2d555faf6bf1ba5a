"""A stand-in ``libnvidia-ml.so.1`` built from C, and the scenario files that drive it.

:func:`build_fake_nvml` compiles ``fake_nvml.c`` once per test session;
:class:`Scenario` writes the line format documented at the top of that file. The
fixtures that load the library into ``pynvml`` are in :mod:`tests.fake_nvml.fixtures`.
"""

from __future__ import annotations

import atexit
import functools
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

SOURCE = Path(__file__).with_name("fake_nvml.c")
LIB_NAME = "libnvidia-ml.so.1"

# Field names the scenario's `unsupported` and `error` directives accept.
FIELDS = (
    "name", "uuid", "max_clock", "clock", "util", "energy", "power", "event_reasons",
    "throttle_reasons", "processes", "process_util", "gpm_support", "gpm_sample",
    "gpm_metrics", "pci", "cc", "attributes", "mig_mode", "mig_devices", "instance_ids",
)

# A device a directive names: a GPU by its position, or "<gpu>/<m>" for MIG device m of
# that GPU (see mig_of).
Target = int | str


def mig_of(gpu: int, mig: int) -> str:
    """The scenario's name of MIG device ``mig`` (order of its ``mig`` lines) of ``gpu``."""
    return f"{gpu}/{mig}"


class FakeNvmlUnavailableError(RuntimeError):
    """The stub cannot be built here (no C compiler); tests that need it skip."""


@functools.cache
def build_fake_nvml(legacy: bool = False) -> Path:
    """Compile the stub into a fresh temporary directory as ``libnvidia-ml.so.1``.

    Args:
        legacy: leave out ``nvmlDeviceGetCurrentClocksEventReasons``, like a driver
            older than R535.

    Returns:
        the library's path; its directory holds nothing else, so it can be put on
        ``LD_LIBRARY_PATH``.

    Raises:
        FakeNvmlUnavailableError: no ``gcc`` on the PATH.
        RuntimeError: the compiler rejected the source (the message holds its output).
    """
    gcc = shutil.which("gcc")
    if gcc is None:
        raise FakeNvmlUnavailableError("gcc not found: cannot build the stand-in libnvidia-ml")
    out_dir = Path(tempfile.mkdtemp(prefix="fake-nvml-legacy-" if legacy else "fake-nvml-"))
    atexit.register(shutil.rmtree, out_dir, True)
    lib = out_dir / LIB_NAME
    cmd = [gcc, "-shared", "-fPIC", "-O2", "-Wall", "-Wextra", "-Werror", "-o", str(lib),
           str(SOURCE)]
    if legacy:
        cmd.insert(1, "-DFAKE_NVML_LEGACY")
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"building the fake NVML failed:\n{' '.join(cmd)}\n{done.stderr}")
    return lib


def _value(v: object) -> str:
    text = str(int(v)) if isinstance(v, bool) else str(v)
    if any(c.isspace() for c in text):
        if '"' in text:
            raise ValueError(f"a scenario value cannot hold both blanks and quotes: {text!r}")
        return f'"{text}"'
    return text


@dataclass
class Scenario:
    """A scenario file, built up directive by directive (format: ``fake_nvml.c``).

    GPUs are numbered by the order of their :meth:`gpu` calls, from 0; the MIG devices
    of a GPU by the order of its :meth:`mig` calls, from 0 (name one with :func:`mig_of`).
    """

    lines: list[str] = field(default_factory=list)

    @property
    def n_gpus(self) -> int:
        return sum(1 for line in self.lines if line.startswith("gpu "))

    def gpu(self, uuid: str, **keys: object) -> Scenario:
        """A GPU, e.g. ``gpu("GPU-1", name="NVIDIA H100 80GB HBM3", sm_clock=1980)``."""
        parts = ["gpu", uuid, *(f"{k}={_value(v)}" for k, v in keys.items())]
        self.lines.append(" ".join(parts))
        return self

    def mig(self, gpu: int, uuid: str, **keys: object) -> Scenario:
        """A MIG device of GPU ``gpu``, e.g. ``mig(0, "MIG-1", profile="3g.20gb", gi=1,
        sm_count=42, any_tensor=40)``; its GPU needs ``mig=1`` to show it."""
        parts = ["mig", str(gpu), uuid, *(f"{k}={_value(v)}" for k, v in keys.items())]
        self.lines.append(" ".join(parts))
        return self

    def unsupported(self, gpu: Target, field_name: str) -> Scenario:
        """``field_name`` of device ``gpu`` answers NOT_SUPPORTED."""
        return self._field_line("unsupported", gpu, field_name)

    def error(self, gpu: Target, field_name: str, code: int) -> Scenario:
        """``field_name`` of device ``gpu`` answers the nvmlReturn_t ``code``."""
        return self._field_line("error", gpu, field_name, str(code))

    def lost(self, gpu: Target, after_reads: int) -> Scenario:
        """Device ``gpu`` answers GPU_IS_LOST once it has been read ``after_reads`` times."""
        self.lines.append(f"lost {gpu} after_reads={after_reads}")
        return self

    def process(
        self, gpu: Target, pid: int, mem_bytes: int | None, sm_util: int | None
    ) -> Scenario:
        """A compute process; None memory is N/A, None util means no utilization sample."""
        mem = "-" if mem_bytes is None else str(mem_bytes)
        util = "-" if sm_util is None else str(sm_util)
        self.lines.append(f"process {gpu} {pid} {mem} {util}")
        return self

    def metric(self, gpu: Target, metric_id: int, value: float, ret: int = 0) -> Scenario:
        """GPM metric ``metric_id`` of device ``gpu``, failing with ``ret`` if non-zero."""
        self.lines.append(f"metric {gpu} {metric_id} {value}" + (f" ret={ret}" if ret else ""))
        return self

    def raw(self, line: str) -> Scenario:
        """Any line, as is (e.g. ``count_error 9``, ``init_error 9``)."""
        self.lines.append(line)
        return self

    def text(self) -> str:
        return "\n".join(["# written by tests.fake_nvml.Scenario", *self.lines, ""])

    def write(self, path: Path) -> Path:
        path.write_text(self.text())
        return path

    def _field_line(self, directive: str, gpu: Target, field_name: str, *rest: str
                    ) -> Scenario:
        if field_name not in FIELDS:
            raise ValueError(f"unknown fake NVML field {field_name!r}; one of {FIELDS}")
        self.lines.append(" ".join([directive, str(gpu), field_name, *rest]))
        return self
