"""The ``flopledger`` command."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from agent import __version__
from agent.config import SOURCES, Config, load_config, parse_listen
from agent.config_errors import ConfigError
from agent.sources.base import SourceError

log = logging.getLogger("flopledger")


def _load(args: argparse.Namespace) -> Config:
    config = load_config(Path(args.config) if args.config else None)
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
    from agent.daemon import assumptions_for, open_source
    from agent.estimate import build_coefficients
    from agent.specs import load_spec_table

    config = _load(args)
    specs = load_spec_table(config.agent.spec_file)
    source, _clock = open_source(config, specs)
    devices = source.devices()
    assumptions = assumptions_for(devices, specs, config, source)
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flopledger",
        description="Measure the training compute (FLOP) of every GPU, run and model.",
    )
    parser.add_argument("--version", action="version", version=f"flopledger {__version__}")
    parser.add_argument("--log-level", default="INFO",
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    sub = parser.add_subparsers(dest="command", required=True)

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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        status: int = args.func(args)
    except ConfigError as e:
        print(f"flopledger: configuration error in {e}", file=sys.stderr)
        return 2
    except SourceError as e:
        print(f"flopledger: {e}", file=sys.stderr)
        return 3
    return status


if __name__ == "__main__":
    sys.exit(main())
