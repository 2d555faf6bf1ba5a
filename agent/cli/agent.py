"""``flopledger run`` and ``flopledger gpus``: the agent itself, and what it would see."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

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
    run.add_argument("--interval", type=float,
                     help="sampling interval in seconds (0.1 to 3600)")
    run.add_argument("--exit-after", type=float, help="stop after this many seconds")
    run.add_argument("--summary", help="write final totals as JSON to this file on exit")
    run.set_defaults(func=cmd_run)

    gpus = sub.add_parser("gpus", help="list detected GPUs and the estimator each gets")
    gpus.add_argument("--config", help="TOML config file")
    gpus.add_argument("--source", choices=SOURCES, help="override agent.source")
    gpus.set_defaults(func=cmd_gpus)
