"""The replayed band against published FLOP: ``dcgmi dmon`` logs of an H100 training run.

The run: nikosvil/flopcheck, ``probe/results/20260916T190612Z`` (commit 07fb23ca),
bf16 training of a TinyLlama-1.1B architecture on one H100 PCIe (114 SMs, 350 W cap),
six configurations of 120 s each, sampled by ``dcgmi dmon -e 1002,1004,100,155,203
-d 100``. Its ``results.jsonl`` publishes per configuration the measured window
(``elapsed_s``), throughput (``tokens_per_s``) and FLOP per token on two bases:
*model* FLOP (6N plus attention, recomputation excluded: the Guidelines' Annex A.1
basis) and *executed* FLOP (``torch.utils.flop_counter``, recomputation included).
So model FLOP = tokens_per_s x elapsed_s x model_flops_per_token, executed likewise.

Each log is replayed as an operator would (``--gpu-model h100_pcie --interval-hint
0.1``), once with nothing declared and once with the run declared as it was (bf16;
full activation recomputation for the ``ckpt`` configurations). The table gives the
central estimate and the band against both published figures, and whether the band
holds each.

Run: ``python -m benchmarks.h100_dmon [--logs DIR]``; DIR holds the ``dcgm_*.log``
files (default: the two stored in ``tests/replay/data/dcgmi_dmon``; point it at a
checkout's ``probe/results/20260916T190612Z`` for all six).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

from agent import figures
from agent.accounting.band import Band
from agent.replay.engine import ReplayEngine, ReplayOptions

DATA = Path(__file__).resolve().parent.parent / "tests" / "replay" / "data" / "dcgmi_dmon"
INTERVAL_S = 0.1  # the probe's `dcgmi dmon -d 100`
GPU_MODEL = "h100_pcie"


@dataclass(frozen=True)
class Published:
    """One configuration of the run as ``results.jsonl`` gives it."""

    tag: str  # s2048_b8_ckpt: the log's name is dcgm_<tag>.log
    seq: int
    batch: int
    ckpt: bool
    elapsed_s: float
    tokens_per_s: float
    model_flops_per_token: float
    executed_flops_per_token: float

    @property
    def model_flop(self) -> float:
        return self.tokens_per_s * self.elapsed_s * self.model_flops_per_token

    @property
    def executed_flop(self) -> float:
        return self.tokens_per_s * self.elapsed_s * self.executed_flops_per_token


def published(path: Path = DATA / "results.jsonl") -> list[Published]:
    """The configurations of ``results.jsonl``, in its order."""
    out = []
    for line in path.read_text().splitlines():
        r = json.loads(line)
        c = r["config"]
        tag = f"s{c['seq']}_b{c['batch']}_{'ckpt' if c['ckpt'] else 'nockpt'}"
        out.append(Published(tag, c["seq"], c["batch"], c["ckpt"], r["elapsed_s"],
                             r["tokens_per_s"], r["model_flops_per_token"],
                             r["executed_flops_per_token"]))
    return out


def mapping_text(ckpt: bool) -> str:
    """A run mapping declaring the run as it was: bf16, full recomputation if ckpt."""
    return ("[runs.probe]\nprecision = \"bf16\"\n"
            f"recompute = \"{'full' if ckpt else 'none'}\"\n\n"
            "[[gpu]]\nall = true\nrun = \"probe\"\n")


def replay(log: Path, declared: bool, ckpt: bool, work: Path) -> Band[int]:
    """The replayed FLOP band of ``log`` (declared: with the run's mapping).

    Raises:
        RuntimeError: if the replay failed (its reason).
    """
    mapping = None
    if declared:
        mapping = work / f"{log.stem}.toml"
        mapping.write_text(mapping_text(ckpt))
    ledger = work / f"{log.stem}-{'declared' if declared else 'plain'}.sqlite"
    options = ReplayOptions(gpu_model=GPU_MODEL, interval_hint_s=INTERVAL_S, mapping=mapping)
    summary = ReplayEngine(ledger, options).run([log])
    if summary.failure is not None:
        raise RuntimeError(summary.failure)
    return summary.total.flop


@dataclass(frozen=True)
class Row:
    config: Published
    declared: bool
    band: Band[int]

    def holds(self, flop: float) -> bool:
        return self.band.low <= flop <= self.band.high

    def error(self, flop: float) -> float:
        """Central's error against ``flop``, in percent."""
        return (self.band.central / flop - 1) * 100


def rows(logs: Path = DATA) -> list[Row]:
    """Every configuration whose log is in ``logs``, replayed both ways."""
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for config in published():
            log = logs / f"dcgm_{config.tag}.log"
            if not log.exists():
                continue
            for declared in (False, True):
                out.append(Row(config, declared,
                               replay(log, declared, config.ckpt, Path(tmp))))
    return out


def table(found: list[Row]) -> str:
    head = (f"{'configuration':<16} {'declared':<20} {'model FLOP':>10} {'executed':>10}  "
            f"{'replayed: central [low .. high]':<36} {'vs model':>9} {'vs exec':>8}  "
            f"holds model  holds executed")
    lines = [head, "-" * len(head)]
    for r in found:
        c = r.config
        declared = ("bf16, recompute " + ("full" if c.ckpt else "none")) if r.declared \
            else "nothing"
        lines.append(
            f"{c.tag:<16} {declared:<20} {figures.flop(c.model_flop):>10} "
            f"{figures.flop(c.executed_flop):>10}  {figures.band(*r.band):<36} "
            f"{r.error(c.model_flop):>+8.1f}% {r.error(c.executed_flop):>+7.1f}%  "
            f"{'yes' if r.holds(c.model_flop) else 'NO':<11}  "
            f"{'yes' if r.holds(c.executed_flop) else 'NO'}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--logs", type=Path, default=DATA,
                   help="folder of the dcgm_<config>.log files (default: the stored two)")
    args = p.parse_args(argv)
    found = rows(args.logs)
    if not found:
        print(f"no dcgm_<config>.log of results.jsonl in {args.logs}")
        return 1
    print(f"H100 PCIe, dcgmi dmon every {INTERVAL_S * 1000:.0f} ms, replayed with "
          f"--gpu-model {GPU_MODEL} --interval-hint {INTERVAL_S}")
    print(table(found))
    missing = [c.tag for c in published() if not (args.logs / f"dcgm_{c.tag}.log").exists()]
    if missing:
        print(f"not in {args.logs}: {', '.join(missing)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
