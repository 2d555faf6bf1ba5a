"""What ``flopledger run`` checks before it creates anything.

Every configuration file in one pass (the agent config, the GPU spec table, the
thresholds file, the web config, the notification channels and their secrets), then the
machine: the state directory can be created and written, the summary file can be
written, the listen address resolves and is free. Only then does the daemon open the
source and create the ledger and the node key, so a bad start leaves nothing behind
(issue 10).
"""

from __future__ import annotations

import errno
import os
import socket
import ssl
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from agent.compliance.thresholds import Registry, load_registry
from agent.config import AgentConfigError, Config
from agent.configfile import ConfigError, ConfigFilesError, ErrorCollector, Problems
from agent.ledger import lock as state_lock
from agent.notify.config import build_channels
from agent.notify.message import Channel
from agent.sources.specs import MATMUL_PRECISIONS, SpecTable, load_spec_table
from exporters.web.config import WebConfig, load_web_config

__all__ = ["Checked", "check_start", "listen_problem", "state_dir_problem",
           "summary_problem", "with_other_files"]


@dataclass(frozen=True, slots=True)
class Checked:
    """What the checks loaded, for the daemon to use as is."""

    specs: SpecTable
    registry: Registry
    web: WebConfig | None
    channels: dict[str, Channel]


def _probe_dir(directory: Path) -> str | None:
    """None if a directory can be created in ``directory``, else why not.

    A real mkdir rather than ``os.access``: root passes every permission check, but
    not a read-only mount or /proc. The probe is removed at once.
    """
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".flopledger-probe-", dir=directory))
    except OSError as e:
        return e.strerror or str(e)
    return None


def state_dir_problem(state_dir: Path) -> str | None:
    """What is wrong with ``state_dir`` as the agent's state directory (it must exist
    and be writable, or be creatable), or None. Creates nothing."""
    try:
        if state_dir.exists():
            if not state_dir.is_dir():
                return f"a directory ({state_dir} exists and is not a directory)"
            why = _probe_dir(state_dir)
            return None if why is None else f"a writable directory ({state_dir}: {why})"
        ancestor = next(p for p in state_dir.absolute().parents if p.exists())
        if not ancestor.is_dir():
            return f"a directory that can be created ({ancestor} is not a directory)"
        why = _probe_dir(ancestor)
        return (None if why is None
                else f"a directory that can be created ({state_dir}: {ancestor}: {why})")
    except OSError as e:
        return f"a usable directory ({state_dir}: {e.strerror or e})"


def summary_problem(path: Path, state_dir: Path) -> str | None:
    """What is wrong with ``path`` as the summary written at exit, or None."""
    try:
        if path.is_dir():
            return f"a file path ({path} is a directory)"
        parent = path.absolute().parent
        if not parent.exists():
            # The state directory is created at start; any other must exist already.
            if parent == state_dir.absolute():
                return None
            return f"a file in an existing directory (not found: {parent})"
        if not parent.is_dir():
            return f"a file in a directory ({parent} is not one)"
        why = _probe_dir(parent)
        return None if why is None else f"a file in a writable directory ({parent}: {why})"
    except OSError as e:
        return f"a usable file path ({path}: {e.strerror or e})"


def listen_problem(host: str, port: int) -> str | None:
    """None if ``host:port`` resolves and can be bound now, else what is expected.

    The test socket is closed again: the HTTP server binds the address itself once
    the ledger is open, but a port in use or a host that does not resolve is found
    before anything is created.
    """
    shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
    except (OSError, UnicodeError) as e:
        why = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        return f"a host name or address that resolves ({host!r} does not: {why})"
    family, kind, proto, _, address = infos[0]
    try:
        with socket.socket(family, kind, proto) as s:
            # As the server does: a connection of the previous run in TIME_WAIT is no
            # conflict, a listening socket is.
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(address)
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            return f"an address that is free ({shown} is in use by another process)"
        if e.errno == errno.EADDRNOTAVAIL:
            return f"an address of this machine ({shown} is not one)"
        if e.errno == errno.EACCES:
            return (f"an address this user may bind ({shown}: permission denied; ports "
                    f"below 1024 need privileges)")
        return f"an address that can be bound ({shown}: {e.strerror or e})"
    return None


def _machine(config: Config, specs: SpecTable | None, listen_key: str) -> None:
    """Raises ConfigError for every problem of the machine (see the module docstring)
    and of the simulated GPU model against the spec table."""
    a = config.agent
    problems = Problems(config.path or Path("<defaults and command line>"))
    if (why := state_dir_problem(a.state_dir)) is not None:
        problems.add("agent.state_dir", why)
    elif (pid := state_lock.holder(a.state_dir)) is not None:
        # Said before the listen address: a second agent with the same config would
        # otherwise be told only that its port is busy, not who holds the ledger.
        problems.add("agent.state_dir", f"a state directory no other agent uses "
                     f"({state_lock.lock_path(a.state_dir)} is held by PID {pid})")
    if a.summary_file is not None and (why := summary_problem(a.summary_file,
                                                              a.state_dir)) is not None:
        problems.add("agent.summary_file", why)
    if (why := listen_problem(a.listen_host, a.listen_port)) is not None:
        problems.add(listen_key, why)
    if specs is not None and a.source in ("auto", "simulated"):
        sim = config.sim
        if sim.gpu_model not in specs:
            problems.add("sim.gpu_model", f"a key of the GPU spec table {specs.path} "
                         f"(one of {sorted(specs.keys())})")
        elif not specs[sim.gpu_model].supports(MATMUL_PRECISIONS.get(sim.workload.precision,
                                                                      "")):
            problems.add("sim.workload.precision",
                         f"a precision {sim.gpu_model} has tensor cores for "
                         f"(not {sim.workload.precision})")
    problems.raise_if_any()


def _channels(config: Config) -> dict[str, Channel]:
    """The notification channels, with their secrets: read here and not when the
    config is loaded, so commands that send nothing never need them.

    Raises:
        ConfigError: a secret that cannot be read (naming its key), or a channel that
            cannot be set up.
    """
    try:
        return build_channels(config.notify, config.path)
    except (OSError, ssl.SSLError, ValueError) as e:
        # A ca_file that exists (checked with the config) but does not load.
        raise ConfigError(config.path or Path("<config>"),
                          [("notify", f"channels that can be set up ({e})")]) from e


def _files(errors: ErrorCollector, config: Config) -> tuple[
        SpecTable | None, Registry | None, WebConfig | None, dict[str, Channel] | None]:
    a = config.agent
    specs = errors.attempt(lambda: load_spec_table(a.spec_file))
    registry = errors.attempt(lambda: load_registry(a.thresholds_file))
    web_file = config.web.config_file
    load_web: Callable[[], WebConfig | None] = (
        (lambda: load_web_config(web_file)) if web_file is not None and web_file.is_file()
        else (lambda: None))
    web = errors.attempt(load_web)
    channels = errors.attempt(lambda: _channels(config))
    return specs, registry, web, channels


def check_start(config: Config, listen_key: str = "agent.listen") -> Checked:
    """Load every file ``config`` names and check the machine, all in one pass.

    Args:
        listen_key: how to name the address: ``agent.listen``, or ``--listen`` when
            the command line gave it.

    Raises:
        ConfigError: one per file with problems (a ConfigFilesError for several),
            naming each file, key and what was expected.
    """
    errors = ErrorCollector()
    specs, registry, web, channels = _files(errors, config)
    errors.attempt(lambda: _machine(config, specs, listen_key))
    errors.raise_if_any()
    # raise_if_any above: every loader succeeded.
    assert specs is not None
    assert registry is not None
    assert channels is not None
    return Checked(specs, registry, web, channels)


def with_other_files(error: ConfigError) -> ConfigError:
    """``error`` of the agent config, with the problems of the files it names (the
    spec table, the thresholds file...) added, so one run reports them all.

    The machine is not checked: a bad config's values are defaults, not the operator's.
    """
    found = error.errors if isinstance(error, ConfigFilesError) else [error]
    partial = next((e.partial for e in found if isinstance(e, AgentConfigError)), None)
    if partial is None:
        return error
    errors = ErrorCollector()
    errors.errors.extend(found)
    _files(errors, partial)
    try:
        errors.raise_if_any()
    except ConfigError as e:
        return e
    return error
