"""How the NVML source sorts ``pynvml`` failures, and the once-per-key log it keeps.

Every NVML call of :mod:`agent.sources.nvml` goes through one helper, which asks
:func:`classify` what a failure means:

* ``UNSUPPORTED``: the GPU, driver or our privileges do not provide the value
  (``NOT_SUPPORTED``, ``NO_PERMISSION``, ``FUNCTION_NOT_FOUND``). It is a value, not an
  error: the field stays NaN and is logged once.
* ``LOST``: the GPU has gone (``GPU_IS_LOST``, ``GPU_NOT_FOUND``, ``RESET_REQUIRED``);
  nothing more can be read from it until the driver is reloaded.
* ``ERROR``: anything else; the field is NaN for this tick and counted.

Codes are compared by number rather than by ``pynvml`` class so that an exception
raised with a code the bindings have no class for is still sorted correctly.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable, Hashable
from typing import ParamSpec, TypeVar

import pynvml

P = ParamSpec("P")
T = TypeVar("T")

NVML_SUCCESS = 0
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_NO_PERMISSION = 4
NVML_ERROR_NOT_FOUND = 6
NVML_ERROR_DRIVER_NOT_LOADED = 9
NVML_ERROR_LIBRARY_NOT_FOUND = 12
NVML_ERROR_FUNCTION_NOT_FOUND = 13
NVML_ERROR_GPU_IS_LOST = 15
NVML_ERROR_RESET_REQUIRED = 16
NVML_ERROR_LIB_RM_VERSION_MISMATCH = 18
NVML_ERROR_NO_DATA = 21
NVML_ERROR_GPU_NOT_FOUND = 28

UNSUPPORTED_CODES = frozenset(
    {NVML_ERROR_NOT_SUPPORTED, NVML_ERROR_NO_PERMISSION, NVML_ERROR_FUNCTION_NOT_FOUND}
)
LOST_CODES = frozenset(
    {NVML_ERROR_GPU_IS_LOST, NVML_ERROR_GPU_NOT_FOUND, NVML_ERROR_RESET_REQUIRED}
)

# nvmlDeviceGetProcessUtilization has no "no samples" success: the driver answers
# NOT_FOUND (or NO_DATA) when no process ran since the timestamp, and pynvml raises
# NVMLError(0) when the sizing call succeeds with a count of zero.
NO_SAMPLES_CODES = frozenset({NVML_SUCCESS, NVML_ERROR_NOT_FOUND, NVML_ERROR_NO_DATA})


class Failure(enum.Enum):
    """What a failed NVML call means for the field or GPU it was reading."""

    UNSUPPORTED = "unsupported"
    LOST = "lost"
    ERROR = "error"


def nvml_code(exc: BaseException) -> int | None:
    """The ``nvmlReturn_t`` code carried by a pynvml exception, None for other exceptions.

    ``NVMLLibraryMismatchError`` is what pynvml's unversioned wrappers raise instead of
    ``NVMLError_FunctionNotFound``; it is reported as ``FUNCTION_NOT_FOUND``.
    """
    if isinstance(exc, pynvml.NVMLLibraryMismatchError):
        return NVML_ERROR_FUNCTION_NOT_FOUND
    if isinstance(exc, pynvml.NVMLError):
        value = getattr(exc, "value", None)
        return value if isinstance(value, int) else None
    return None


def classify(exc: BaseException) -> Failure:
    """Sort a failure of one NVML call; anything that is not NVML's is an ``ERROR``."""
    return classify_code(nvml_code(exc))


def classify_code(code: int | None) -> Failure:
    """Sort an ``nvmlReturn_t`` code (e.g. a GPM metric's own ``nvmlReturn``)."""
    if code in UNSUPPORTED_CODES:
        return Failure.UNSUPPORTED
    if code in LOST_CODES:
        return Failure.LOST
    return Failure.ERROR


def none_for(codes: frozenset[int], fn: Callable[P, T]) -> Callable[P, T | None]:
    """``fn``, answering None instead of raising for the NVML return ``codes``.

    For calls whose failure NVML documents as the normal answer, so the gate does not
    log them as unsupported: ``nvmlDeviceGetAttributes`` answers only for MIG devices,
    ``nvmlDeviceGetMigMode`` only on GPUs that have MIG.
    """
    def call(*args: P.args, **kwargs: P.kwargs) -> T | None:
        try:
            return fn(*args, **kwargs)
        except (pynvml.NVMLError, pynvml.NVMLLibraryMismatchError) as e:
            if nvml_code(e) in codes:
                return None
            raise
    return call


def describe(exc: BaseException) -> str:
    """``"Not Supported (code 3)"``: pynvml's text and the raw code, for log lines."""
    code = nvml_code(exc)
    text = str(exc)  # pynvml's __str__ already survives a library that cannot answer
    return text if code is None else f"{text} (code {code})"


def init_failure_reason(exc: BaseException) -> str:
    """A short, actionable reason why ``nvmlInit`` failed, for the agent's start-up log."""
    code = nvml_code(exc)
    if code == NVML_ERROR_LIBRARY_NOT_FOUND:
        return "libnvidia-ml.so.1 not found (no NVIDIA driver installed or not in the library path)"
    if code == NVML_ERROR_DRIVER_NOT_LOADED:
        return "NVIDIA kernel driver not loaded"
    if code == NVML_ERROR_NO_PERMISSION:
        return "no permission to open the NVIDIA device nodes (/dev/nvidia*)"
    if code == NVML_ERROR_LIB_RM_VERSION_MISMATCH:
        return "libnvidia-ml and the loaded kernel driver differ in version (reload the driver)"
    return f"nvmlInit failed: {describe(exc)}"


class OnceLog:
    """Logs a message the first time a key is seen and stays quiet after that.

    Used so an unsupported field or a lost GPU is reported once per agent run, not once
    per tick.
    """

    def __init__(self, logger: logging.Logger) -> None:
        self._logger = logger
        self._seen: set[Hashable] = set()

    def __contains__(self, key: Hashable) -> bool:
        return key in self._seen

    def log(self, key: Hashable, level: int, msg: str, *args: object) -> bool:
        """Log ``msg % args`` at ``level`` unless ``key`` was logged before; True if logged."""
        if key in self._seen:
            return False
        self._seen.add(key)
        self._logger.log(level, msg, *args)
        return True
