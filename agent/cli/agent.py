"""``flopledger run`` and ``flopledger gpus``: the agent itself, and what it would see."""

from __future__ import annotations

import argparse
import dataclasses
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from agent.accounting.band import Band
from agent.accounting.names import printable
from agent.cli.common import config_of
from agent.config import (
    MAX_EXIT_AFTER_S,
    MAX_INTERVAL_S,
    MIN_INTERVAL_S,
    SOURCES,
    AgentConfigError,
    Config,
    interval_problem,
    parse_listen,
)
from agent.configfile import ConfigError, ErrorCollector, Problems, in_range, range_text
from agent.sources.specs import MAX_CLOCK_MHZ, MAX_SM_COUNT, ResolvedSpec, SpecBasis

if TYPE_CHECKING:
    from agent.accounting.coefficients import EstimatorSettings
    from agent.sources.base import ActivityKind


def _load(args: argparse.Namespace) -> Config:
    """The config with the command line's overrides.

    Raises:
        ConfigError: for a bad file, or a bad ``--interval``, ``--listen`` or
            ``--exit-after`` (both at once when both are bad).
    """
    errors = ErrorCollector()
    try:
        config = config_of(args)
    except AgentConfigError as e:
        errors.errors.append(e)
        config = e.partial
    except ConfigError as e:
        errors.errors.append(e)
        config = Config()
    cli = Problems("command line")
    agent = config.agent
    if getattr(args, "source", None):
        agent = dataclasses.replace(agent, source=args.source)
    if getattr(args, "interval", None) is not None:
        if not in_range(args.interval, MIN_INTERVAL_S, MAX_INTERVAL_S):
            cli.add("--interval", range_text("a number of seconds", MIN_INTERVAL_S,
                                             MAX_INTERVAL_S))
        elif (why := interval_problem(args.interval, agent.checkpoint_s,
                                      config.estimator.max_gap_s)) is not None:
            cli.add("--interval", why)
        else:
            agent = dataclasses.replace(agent, interval_s=args.interval)
    if getattr(args, "listen", None):
        parsed = parse_listen(args.listen)
        if parsed is None:
            cli.add("--listen", "\"host:port\" with a port between 0 and 65535")
        else:
            agent = dataclasses.replace(agent, listen_host=parsed[0], listen_port=parsed[1])
    if getattr(args, "exit_after", None) is not None:
        if not in_range(args.exit_after, 0, MAX_EXIT_AFTER_S, above=True):
            cli.add("--exit-after", range_text("a number of seconds", 0, MAX_EXIT_AFTER_S,
                                               above=True))
        else:
            agent = dataclasses.replace(agent, exit_after_s=args.exit_after)
    if getattr(args, "summary", None):
        agent = dataclasses.replace(agent, summary_file=Path(args.summary))
    if cli:
        errors.errors.append(ConfigError(cli.path, cli.items))
    errors.raise_if_any()
    return dataclasses.replace(config, agent=agent)


def cmd_run(args: argparse.Namespace) -> int:
    from agent.daemon import run_agent
    from agent.preflight import with_other_files

    try:
        config = _load(args)
    except ConfigError as e:
        raise with_other_files(e) from None
    a = config.agent
    return run_agent(config, (a.listen_host, a.listen_port) if args.listen else None)


def _pci_device_id(text: str) -> int:
    """``0x2684`` (as ``lspci -nn`` and NVML print it) or a decimal number."""
    try:
        value = int(text, 0)
    except ValueError:
        value = -1
    if not 0 <= value <= 0xFFFF:
        raise argparse.ArgumentTypeError(f"expected a 16-bit PCI device ID such as 0x2330, "
                                         f"got {text!r}")
    return value


def _compute_capability(text: str) -> str:
    if re.fullmatch(r"\d{1,2}\.\d{1,2}", text.strip()) is None:
        raise argparse.ArgumentTypeError(f"expected a compute capability such as 9.0, "
                                         f"got {text!r}")
    return text.strip()


def _sm_count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= MAX_SM_COUNT:
        raise argparse.ArgumentTypeError(f"expected a number of SMs from 1 to {MAX_SM_COUNT}, "
                                         f"got {text!r}")
    return value


def _clock_mhz(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value <= MAX_CLOCK_MHZ:
        raise argparse.ArgumentTypeError(f"expected a clock in MHz above 0 and at most "
                                         f"{MAX_CLOCK_MHZ:g}, got {text!r}")
    return value


def _peaks(resolved: Sequence[ResolvedSpec], kinds: Sequence[ActivityKind],
           max_clocks: Sequence[float | None], settings: EstimatorSettings) -> list[Band[float]]:
    """Per GPU, the tensor peak (FLOP/s at the maximum clock, undeclared precision) the
    estimator would use: central, and the low and high bounds of its per-clock figures."""
    from agent.accounting.coefficients import GpuAssumptions, gpu_coefficients

    peaks = []
    for r, kind, clock in zip(resolved, kinds, max_clocks, strict=True):
        c = gpu_coefficients(GpuAssumptions(r.spec, kind, None, 1.0, clock), settings)
        hz = c.max_clock_mhz * 1e6
        # The peak's own uncertainty only (a derived or ceiling spec); the counter and
        # recomputation allowances of the estimate are not part of a peak.
        peaks.append(Band(c.tensor_fpc_low * hz * r.low_factor, c.tensor_fpc_central * hz,
                          c.tensor_fpc_high * hz * r.high_factor))
    return peaks


def _tflops(peak: Band[float]) -> str:
    return f"{peak.central / 1e12:.1f} TFLOP/s [{peak.low / 1e12:.1f} .. {peak.high / 1e12:.1f}]"


def cmd_resolve(args: argparse.Namespace, config: Config) -> int:
    """How each ``--resolve`` name (with the driver facts given) finds its peak."""
    from agent.sources.base import ActivityKind
    from agent.sources.specs import load_spec_table

    specs = load_spec_table(config.agent.spec_file)
    for name in args.resolve:
        r = specs.resolve(name, pci_device_id=args.pci_device_id,
                          compute_capability=args.compute_capability, sm_count=args.sm_count,
                          max_sm_clock_mhz=args.max_sm_clock_mhz)
        peak = _peaks([r], [ActivityKind.NONE], [args.max_sm_clock_mhz], config.estimator)[0]
        print(f"name     {printable(name)}")
        print(f"row      {r.spec.key} ({r.spec.name}, {r.spec.architecture}, "
              f"{r.spec.sm_count} SMs, {r.spec.max_sm_clock_mhz:.0f} MHz)")
        print(f"basis    {r.basis}" + ("" if r.basis == SpecBasis.TABLE
                                       else "  (NOT IN THE SPEC TABLE: band widened)"))
        print(f"factors  low x{r.low_factor:.3g}, high x{r.high_factor:.3g} of the row's "
              "FLOP per clock")
        print(f"peak     {_tflops(peak)} (tensor, undeclared precision, at the maximum clock)")
        print(f"reason   {printable(r.reason) or '-'}")
        print()
    print(f"spec table: {specs.path}")
    return 0


def cmd_gpus(args: argparse.Namespace) -> int:
    from agent.devices import open_source, specs_for
    from agent.sources.specs import load_spec_table

    config = _load(args)
    if args.resolve:
        return cmd_resolve(args, config)
    specs = load_spec_table(config.agent.spec_file)
    source, _clock = open_source(config, specs)
    devices = source.devices()
    resolved = specs_for(devices, specs)
    peaks = _peaks(resolved, [d.activity_kind for d in devices],
                   [d.max_sm_clock_mhz for d in devices], config.estimator)
    header = (f"{'idx':>3}  {'uuid':<40}  {'name':<36}  {'spec':<10}  {'basis':<8}  "
              f"{'max MHz':>7}  estimator")
    print(header)
    for d, r, peak in zip(devices, resolved, peaks, strict=True):
        if d.activity_kind.name == "GPM":
            method = "gpm-tensor (NVML GPM tensor activity x clock)"
        elif d.activity_kind.name == "DCGM":
            method = "dcgm-tensor (DCGM tensor-pipe activity x clock)"
        else:
            method = "utilization (utilization.gpu x prior; wide band)"
        if r.basis == SpecBasis.TABLE:
            method += f"; peak {peak.central / 1e12:.1f} TFLOP/s"
        else:
            method += (f"; peak {_tflops(peak)}; NOT IN THE SPEC TABLE, {r.basis} spec: "
                       f"{printable(r.reason)}")
        print(f"{d.index:>3}  {d.uuid:<40}  {printable(d.name)[:36]:<36}  {r.spec.key:<10}  "
              f"{r.basis:<8}  {(d.max_sm_clock_mhz or 0):>7.0f}  {method}")
    off_table = sum(r.basis != SpecBasis.TABLE for r in resolved)
    if off_table:
        print(f"WARNING: {off_table} of {len(devices)} GPU(s) not in the spec table: their "
              "FLOP rest on a derived or ceiling peak (`flopledger gpus --resolve NAME` "
              "shows how a name resolves)")
    print(f"source: {source.kind}")
    source.close()
    return 0


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``run`` and ``gpus``."""
    run = sub.add_parser("run", help="run the agent in the foreground")
    run.add_argument("--config", help="TOML config file (defaults apply without one)")
    run.add_argument("--listen", help="HOST:PORT for /metrics (default 0.0.0.0:9947)")
    run.add_argument("--source", choices=SOURCES, help="override agent.source")
    run.add_argument("--interval", type=float,
                     help="sampling interval in seconds (0.1 to 3600)")
    run.add_argument("--exit-after", type=float, help="stop after this many seconds")
    run.add_argument("--summary", help="write final totals as JSON to this file on exit")
    run.set_defaults(func=cmd_run)

    gpus = sub.add_parser(
        "gpus", help="list detected GPUs, the spec and estimator each gets; or, with "
                     "--resolve, how a device name finds its spec")
    gpus.add_argument("--config", help="TOML config file")
    gpus.add_argument("--source", choices=SOURCES, help="override agent.source")
    gpus.add_argument("--resolve", action="append", metavar="NAME",
                      help="show the spec row, basis, band factors and reason a device name "
                           "(as nvidia-smi prints it) resolves to; repeatable; opens no source")
    gpus.add_argument("--pci-device-id", type=_pci_device_id, metavar="ID",
                      help="with --resolve: the PCI device ID (0x2684)")
    gpus.add_argument("--compute-capability", type=_compute_capability, metavar="X.Y",
                      help="with --resolve: the CUDA compute capability (8.9)")
    gpus.add_argument("--sm-count", type=_sm_count, metavar="N",
                      help="with --resolve: the number of SMs the driver reports")
    gpus.add_argument("--max-sm-clock-mhz", type=_clock_mhz, metavar="MHZ",
                      help="with --resolve: the maximum SM clock the driver reports")
    gpus.set_defaults(func=cmd_gpus)
