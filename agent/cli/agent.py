"""``flopledger run`` and ``flopledger gpus``: the agent itself, and what it would see."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from agent.cli.common import config_of
from agent.config import SOURCES, Config, parse_listen
from agent.configfile import ConfigError


def _load(args: argparse.Namespace) -> Config:
    """The config with the command line's overrides.

    Raises:
        ConfigError: for a bad file, or a bad ``--interval`` or ``--listen``.
    """
    config = config_of(args)
    agent = config.agent
    if getattr(args, "source", None):
        agent = dataclasses.replace(agent, source=args.source)
    if getattr(args, "interval", None) is not None:
        if args.interval < 0.1:
            raise ConfigError("--interval", [("--interval", "a number of seconds >= 0.1")])
        agent = dataclasses.replace(agent, interval_s=args.interval)
    if getattr(args, "listen", None):
        parsed = parse_listen(args.listen)
        if parsed is None:
            raise ConfigError("--listen", [("--listen", "\"host:port\"")])
        agent = dataclasses.replace(agent, listen_host=parsed[0], listen_port=parsed[1])
    if getattr(args, "exit_after", None) is not None:
        agent = dataclasses.replace(agent, exit_after_s=args.exit_after)
    if getattr(args, "summary", None):
        agent = dataclasses.replace(agent, summary_file=Path(args.summary))
    return dataclasses.replace(config, agent=agent)


def cmd_run(args: argparse.Namespace) -> int:
    from agent.daemon import run_agent

    return run_agent(_load(args))


def cmd_gpus(args: argparse.Namespace) -> int:
    from agent.accounting.estimate import GpuAssumptions, build_coefficients
    from agent.daemon import open_source, specs_for
    from agent.sources.specs import load_spec_table

    config = _load(args)
    specs = load_spec_table(config.agent.spec_file)
    source, _clock = open_source(config, specs)
    devices = source.devices()
    assumptions = [GpuAssumptions(spec, d.activity_kind, None, 1.0, d.max_sm_clock_mhz)
                   for d, spec in zip(devices, specs_for(devices, specs), strict=True)]
    coeffs = build_coefficients(assumptions, config.estimator)
    header = f"{'idx':>3}  {'uuid':<40}  {'name':<36}  {'spec':<10}  {'max MHz':>7}  estimator"
    print(header)
    for i, (d, a) in enumerate(zip(devices, assumptions, strict=True)):
        if a.spec is None:
            method = "none (GPU not in the spec table)"
        elif d.activity_kind.name == "GPM":
            method = "gpm-tensor (NVML GPM tensor activity x clock)"
        elif d.activity_kind.name == "DCGM":
            method = "dcgm-tensor (DCGM tensor-pipe activity x clock)"
        else:
            method = "utilization (utilization.gpu x prior; wide band)"
        peak = coeffs.tensor_fpc_central[i] * coeffs.max_clock_mhz[i] * 1e6
        print(f"{d.index:>3}  {d.uuid:<40}  {d.name[:36]:<36}  {d.spec_key or '-':<10}  "
              f"{(d.max_sm_clock_mhz or 0):>7.0f}  {method}; peak {peak / 1e12:.1f} TFLOP/s")
    print(f"source: {source.kind}")
    source.close()
    return 0


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``run`` and ``gpus``."""
    run = sub.add_parser("run", help="run the agent in the foreground")
    run.add_argument("--config", help="TOML config file (defaults apply without one)")
    run.add_argument("--listen", help="HOST:PORT for /metrics (default 0.0.0.0:9947)")
    run.add_argument("--source", choices=SOURCES, help="override agent.source")
    run.add_argument("--interval", type=float, help="sampling interval in seconds (>= 0.1)")
    run.add_argument("--exit-after", type=float, help="stop after this many seconds")
    run.add_argument("--summary", help="write final totals as JSON to this file on exit")
    run.set_defaults(func=cmd_run)

    gpus = sub.add_parser("gpus", help="list detected GPUs and the estimator each gets")
    gpus.add_argument("--config", help="TOML config file")
    gpus.add_argument("--source", choices=SOURCES, help="override agent.source")
    gpus.set_defaults(func=cmd_gpus)
