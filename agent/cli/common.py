"""What the command groups share: the config and ledger options."""

from __future__ import annotations

import argparse
from pathlib import Path

from agent.config import Config, load_config


def config_of(args: argparse.Namespace) -> Config:
    """The config named by ``--config``, or the defaults.

    Raises:
        ConfigError: for a missing, unreadable or invalid file.
    """
    path = getattr(args, "config", None)
    return load_config(Path(path) if path else None)


def ledger_path(args: argparse.Namespace, config: Config | None = None) -> Path:
    """``--ledger``, else ``ledger.sqlite`` in the config's ``agent.state_dir``."""
    if getattr(args, "ledger", None):
        return Path(args.ledger)
    config = config or config_of(args)
    return config.agent.state_dir / "ledger.sqlite"


def add_ledger_args(p: argparse.ArgumentParser) -> None:
    """``--config`` and ``--ledger``, for the commands that read a ledger."""
    p.add_argument("--config", help="TOML config file (for agent.state_dir)")
    p.add_argument("--ledger", help="ledger file (default: <state_dir>/ledger.sqlite)")
