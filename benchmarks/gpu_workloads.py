"""The workloads of ``make gpu-check``: exactly counted GPU work, driven by PyTorch.

Run as a child process by :mod:`benchmarks.gpu_check` (``python -m
benchmarks.gpu_workloads``), so that the GPUs' work and the agent's sampling do not
share an interpreter. PyTorch is imported here only, and only when this process starts;
it is never a dependency of the project.

:class:`WorkloadProcess` is the parent's side: it starts this module and speaks its
protocol, one JSON object per line. Commands come on stdin; replies go to the process's
original stdout, and anything else written to stdout (a library's message) is sent to
stderr instead, so it cannot corrupt a reply.

* on start: ``{"event": "hello", "torch": version | null, "why": reason | null,
  "devices": [{"cuda_index", "name", "uuid", "capability"}]}``; with ``torch`` null (not
  installed) or no CUDA device the process exits after it;
* ``{"cmd": "prepare", "phase", "seconds", "matrix_n"}``: allocate, warm up and size a
  batch on every device -> ``{"event": "ready", "phase", "skipped": {cuda_index: why}}``;
* ``{"cmd": "go"}``: run the prepared phase on every device at once ->
  ``{"event": "done", "phase", "devices": [{"cuda_index", "flop", "bytes", "ops",
  "start_ns", "end_ns"}]}`` where ``start_ns``/``end_ns`` are ``time.monotonic_ns()``
  (the system-wide CLOCK_MONOTONIC, the clock the sampler's ticks are stamped with);
* ``{"cmd": "quit"}``.

The phases (FLOP count a matrix product of n x n by n x n as 2 n^3, one multiply and
one add per term; work is counted in whole operations, each batch ended by a
synchronisation, so every operation counted has completed):

* ``bf16``: ``torch.mm`` of bfloat16 matrices;
* ``fp8``: ``torch._scaled_mm`` of float8_e4m3fn matrices (compute capability 8.9 and
  newer, and a PyTorch that has it), bfloat16 output;
* ``tf32``: ``torch.mm`` of float32 matrices with TF32 tensor cores allowed
  (compute capability 8.0 and newer);
* ``memory``: ``Tensor.copy_`` of a large float32 buffer: bytes moved (read plus
  write) known, zero FLOP.
"""

from __future__ import annotations

import importlib
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TextIO

# A batch of operations between synchronisations: long enough that the Python loop
# costs nothing next to the GPU's work, short enough to stop close to the deadline.
BATCH_S = 0.05
MAX_BATCH = 256  # well under CUDA's launch queue depth
MEMORY_BUFFER_BYTES = 1 << 30
PHASES = ("bf16", "fp8", "tf32", "memory")
_REPO = Path(__file__).resolve().parent.parent
# What the child may take beyond a phase's own length: starting CUDA, allocating,
# warming up, a slow synchronisation at the end.
CHILD_GRACE_S = 180.0


class WorkloadError(Exception):
    """The workload process failed, ended or went silent; one line for the operator."""


@dataclass
class Prepared:
    """One device's operation for a phase, and what each operation does."""

    cuda_index: int
    op: Callable[[], object]
    flop_per_op: int
    bytes_per_op: int
    batch: int
    keep: tuple[object, ...]  # the tensors, alive until the phase ends


class Workloads:
    """The phases on every CUDA device PyTorch sees."""

    def __init__(self, torch: Any) -> None:
        self.torch = torch
        self.count = int(torch.cuda.device_count())
        self.prepared: list[Prepared] = []
        self.phase = ""
        self.seconds = 0.0

    def devices(self) -> list[dict[str, object]]:
        out: list[dict[str, object]] = []
        for i in range(self.count):
            props = self.torch.cuda.get_device_properties(i)
            uuid = getattr(props, "uuid", None)
            out.append({"cuda_index": i, "name": str(props.name),
                        "uuid": None if uuid is None else str(uuid),
                        "capability": [int(props.major), int(props.minor)]})
        return out

    def prepare(self, phase: str, seconds: float, matrix_n: int) -> dict[str, str]:
        """Every device's operation for ``phase``, warmed up and timed; returns the
        devices skipped, with why."""
        self.release()
        self.phase, self.seconds = phase, seconds
        skipped: dict[str, str] = {}
        for i in range(self.count):
            try:
                prepared = self._prepare_one(phase, i, matrix_n)
            except RuntimeError as e:  # out of memory, an unsupported kernel
                text = str(e).strip()
                prepared = f"failed: {text.splitlines()[0] if text else type(e).__name__}"
            if isinstance(prepared, str):
                skipped[str(i)] = prepared
            else:
                self.prepared.append(prepared)
        return skipped

    def _prepare_one(self, phase: str, i: int, n: int) -> Prepared | str:
        """Device ``i``'s operation, warmed up and timed, or why it cannot run."""
        torch = self.torch
        dev = torch.device("cuda", i)
        torch.cuda.set_device(dev)
        major, minor = (int(x) for x in torch.cuda.get_device_capability(dev))
        keep: tuple[object, ...]
        if phase in ("bf16", "tf32"):
            if phase == "tf32" and (major, minor) < (8, 0):
                return f"no TF32 tensor cores on compute capability {major}.{minor}"
            # TF32 is float32 storage with the tensor cores allowed to round to TF32.
            torch.backends.cuda.matmul.allow_tf32 = phase == "tf32"
            dtype = torch.bfloat16 if phase == "bf16" else torch.float32
            a = torch.randn(n, n, device=dev, dtype=dtype)
            b = torch.randn(n, n, device=dev, dtype=dtype)
            c = torch.empty(n, n, device=dev, dtype=dtype)
            keep, flop, nbytes = (a, b, c), 2 * n**3, 0

            def op() -> object:
                return torch.mm(a, b, out=c)
        elif phase == "fp8":
            if (major, minor) < (8, 9):
                return f"no FP8 tensor cores on compute capability {major}.{minor}"
            fp8 = getattr(torch, "float8_e4m3fn", None)
            scaled_mm = getattr(torch, "_scaled_mm", None)
            if fp8 is None or scaled_mm is None:
                return f"torch {torch.__version__} has no float8_e4m3fn or _scaled_mm"
            a = torch.randn(n, n, device=dev).to(fp8)
            # The second operand must be column-major: the transpose of a row-major one.
            b = torch.randn(n, n, device=dev).to(fp8).t()
            one = torch.ones((), device=dev, dtype=torch.float32)
            keep, flop, nbytes = (a, b, one), 2 * n**3, 0

            def op() -> object:
                # Keywords: the positional order changed between PyTorch releases.
                return scaled_mm(a, b, scale_a=one, scale_b=one, out_dtype=torch.bfloat16)
        elif phase == "memory":
            free_bytes, _total = torch.cuda.mem_get_info(dev)
            size = min(MEMORY_BUFFER_BYTES, int(free_bytes) // 4) // 4
            if size < 1 << 20:
                return f"too little free memory on cuda:{i} ({free_bytes} bytes)"
            src = torch.ones(size, device=dev, dtype=torch.float32)
            dst = torch.empty(size, device=dev, dtype=torch.float32)
            keep, flop, nbytes = (src, dst), 0, 2 * 4 * size

            def op() -> object:
                return dst.copy_(src)
        else:
            raise ValueError(f"unknown phase {phase!r}")
        for _ in range(3):
            op()
        torch.cuda.synchronize(dev)
        started = time.perf_counter()
        for _ in range(5):
            op()
        torch.cuda.synchronize(dev)
        per_op_s = max((time.perf_counter() - started) / 5, 1e-6)
        batch = max(1, min(MAX_BATCH, int(BATCH_S / per_op_s)))
        return Prepared(i, op, flop, nbytes, batch, keep)

    def go(self) -> list[dict[str, int]]:
        """Run the prepared phase on every device at once, for ``seconds``."""
        results: list[dict[str, int]] = [{} for _ in self.prepared]
        start = threading.Barrier(len(self.prepared) + 1)
        errors: list[BaseException] = []

        def run(k: int, p: Prepared) -> None:
            torch = self.torch
            dev = torch.device("cuda", p.cuda_index)
            torch.cuda.set_device(dev)
            start.wait()
            ops = 0
            try:
                start_ns = time.monotonic_ns()
                deadline_ns = start_ns + round(self.seconds * 1e9)
                while True:
                    for _ in range(p.batch):
                        p.op()
                    torch.cuda.synchronize(dev)
                    ops += p.batch
                    if time.monotonic_ns() >= deadline_ns:
                        break
                end_ns = time.monotonic_ns()
            except Exception as e:  # noqa: BLE001 - reported to the parent, never lost
                errors.append(e)
                return
            results[k] = {"cuda_index": p.cuda_index, "ops": ops, "flop": ops * p.flop_per_op,
                          "bytes": ops * p.bytes_per_op, "start_ns": start_ns, "end_ns": end_ns}

        threads = [threading.Thread(target=run, args=(k, p), daemon=True)
                   for k, p in enumerate(self.prepared)]
        for t in threads:
            t.start()
        start.wait()
        for t in threads:
            t.join()
        self.release()
        if errors:
            raise RuntimeError(f"{self.phase}: {errors[0]}")
        return results

    def release(self) -> None:
        self.prepared = []
        if self.count:
            self.torch.cuda.empty_cache()


class WorkloadProcess:
    """This module run as a child process, spoken to in JSON lines (the parent's side)."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.gpu_workloads"], cwd=_REPO,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self._lines: queue.Queue[str | None] = queue.Queue()
        assert self.proc.stdout is not None
        threading.Thread(target=self._pump, args=(self.proc.stdout,), daemon=True).start()
        self.hello = self.receive(CHILD_GRACE_S)

    def _pump(self, stream: IO[str]) -> None:
        for line in stream:
            self._lines.put(line)
        self._lines.put(None)

    def receive(self, timeout_s: float) -> dict[str, object]:
        """The child's next reply.

        Raises:
            WorkloadError: it reported an error, ended, or said nothing in time.
        """
        try:
            line = self._lines.get(timeout=timeout_s)
        except queue.Empty:
            raise WorkloadError(
                f"the workload process said nothing for {timeout_s:.0f} s") from None
        if line is None:
            raise WorkloadError(f"the workload process ended (exit status {self.proc.wait()})")
        try:
            doc = json.loads(line)
        except ValueError:
            doc = None
        if not isinstance(doc, dict):
            raise WorkloadError(f"the workload process sent {line.strip()!r}")
        if doc.get("event") == "error":
            raise WorkloadError(f"the workload process failed: {doc.get('why')}")
        return doc

    def request(self, doc: dict[str, object], timeout_s: float) -> dict[str, object]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(doc) + "\n")
        self.proc.stdin.flush()
        return self.receive(timeout_s)

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.write('{"cmd": "quit"}\n')
                self.proc.stdin.close()
                self.proc.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()


def _reply(out: TextIO, doc: dict[str, object]) -> None:
    out.write(json.dumps(doc) + "\n")
    out.flush()


def serve(commands: TextIO, out: TextIO) -> int:
    """Answer the commands until ``quit`` or end of input; see the module docstring."""
    # CUDA's default device order is fastest first; NVML's is by PCI bus. The same
    # order on both sides lets the parent match devices by position where PyTorch
    # cannot say a device's UUID.
    os.environ.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
    try:
        torch = importlib.import_module("torch")
    except ImportError as e:
        _reply(out, {"event": "hello", "torch": None, "why": f"torch not installed ({e})",
                     "devices": []})
        return 0
    if not torch.cuda.is_available():
        _reply(out, {"event": "hello", "torch": str(torch.__version__),
                     "why": "torch sees no CUDA device", "devices": []})
        return 0
    work = Workloads(torch)
    _reply(out, {"event": "hello", "torch": str(torch.__version__), "why": None,
                 "devices": work.devices()})
    for line in commands:
        cmd = json.loads(line)
        kind = cmd.get("cmd")
        try:
            if kind == "prepare":
                skipped = work.prepare(str(cmd["phase"]), float(cmd["seconds"]),
                                       int(cmd["matrix_n"]))
                _reply(out, {"event": "ready", "phase": cmd["phase"], "skipped": skipped})
            elif kind == "go":
                _reply(out, {"event": "done", "phase": work.phase, "devices": work.go()})
            elif kind == "quit":
                return 0
            else:
                _reply(out, {"event": "error", "why": f"unknown command {kind!r}"})
        except (RuntimeError, ValueError) as e:
            work.release()
            _reply(out, {"event": "error", "why": str(e).strip().splitlines()[0]})
    return 0


def main() -> int:
    # Ctrl-C reaches the whole process group: the parent stops this process itself,
    # with a "quit" (or by closing stdin), after its sampler has stopped.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Replies keep the real stdout; a stray print from a library goes to stderr.
    out = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    return serve(sys.stdin, out)


if __name__ == "__main__":
    sys.exit(main())
