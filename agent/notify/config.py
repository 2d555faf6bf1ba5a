"""The ``[notify]`` table: channels to deliver threshold notifications on.

Example::

    [notify]
    poll_s = 1.0

    [[notify.webhook]]
    name = "compliance"
    url = "https://hooks.example/flopledger"
    secret_file = "/etc/flopledger/webhook.secret"   # or secret_env = "ENV_VAR"
    timeout_s = 10
    # ca_file = "/etc/flopledger/hooks-ca.pem"

    [[notify.alertmanager]]
    name = "am"
    url = "http://alertmanager:9093"
    resend_s = 60

    [[notify.command]]
    name = "pager"
    argv = ["/usr/local/bin/notify-compliance", "--json"]
    timeout_s = 30

Channel names key the outbox's delivery rows: renaming a channel makes it a new one
(it gets only notifications enqueued from then on). Loading the config records where a
webhook's secret is kept but does not read it: commands that only read the ledger
(``status``, ``report``...) work where the secret is not available. The secret is read
when the channels are built (:func:`build_channels`, in ``flopledger run``'s start
checks), so a missing secret is still reported with the other problems at start rather
than at the first send.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from agent.configfile import Problems, TableReader, check_keys, in_range, range_text

if TYPE_CHECKING:
    from agent.notify.message import Channel

__all__ = ["AlertmanagerSettings", "CommandSettings", "NotifySettings", "SecretSource",
           "WebhookSettings", "build_channels", "parse_notify_config", "read_secrets"]

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
NAME_EXPECT = "a unique channel name of letters, digits, '_', '.', '-' (at most 64)"
MIN_POLL_S = 0.05
MIN_RESEND_S = 1.0
# Ceilings: beyond them a wait overflows, or a notification is never in time anyway.
MAX_POLL_S = 3600.0
MAX_RESEND_S = 86400.0
MAX_TIMEOUT_S = 3600.0


@dataclass(frozen=True, slots=True)
class SecretSource:
    """Where a webhook's HMAC secret is kept: a file or an environment variable.

    Attributes:
        key: the config key that names it (``notify.webhook[0].secret_file``), for the
            problem reported when it cannot be read.
        file: the secret file (trailing newlines are not part of the secret).
        env: the environment variable's name.
    """

    key: str
    file: Path | None = None
    env: str | None = None


@dataclass(frozen=True, slots=True)
class WebhookSettings:
    name: str
    url: str
    secret: SecretSource
    timeout_s: float = 10.0
    ca_file: Path | None = None


@dataclass(frozen=True, slots=True)
class AlertmanagerSettings:
    name: str
    url: str
    resend_s: float = 60.0
    timeout_s: float = 10.0
    ca_file: Path | None = None
    generator_url: str | None = None


@dataclass(frozen=True, slots=True)
class CommandSettings:
    name: str
    argv: tuple[str, ...]
    timeout_s: float = 30.0


@dataclass(frozen=True, slots=True)
class NotifySettings:
    """Everything under ``[notify]``; no channels when the table is absent."""

    poll_s: float = 1.0
    webhooks: tuple[WebhookSettings, ...] = ()
    alertmanagers: tuple[AlertmanagerSettings, ...] = ()
    commands: tuple[CommandSettings, ...] = ()

    @property
    def channel_names(self) -> tuple[str, ...]:
        """Every channel's name, in file order per kind (what the Outbox is given)."""
        return (*(w.name for w in self.webhooks), *(a.name for a in self.alertmanagers),
                *(c.name for c in self.commands))


def _relative(base: Path, value: str) -> Path:
    return Path(value) if Path(value).is_absolute() else base / value


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


class _Entry(TableReader):
    """One ``[[notify.<kind>]]`` table, read with every problem recorded."""

    def string(self, key: str, expected: str, *, required: bool = False) -> str | None:
        value = self.table.get(key)
        if value is None:
            if required:
                self.add(key, expected)
            return None
        if not isinstance(value, str) or not value:
            self.add(key, expected)
            return None
        return value

    def seconds(self, key: str, default: float, minimum: float,
                maximum: float = MAX_TIMEOUT_S) -> float:
        value = self.table.get(key, default)
        if not in_range(value, minimum, maximum):
            self.add(key, range_text("a number of seconds", minimum, maximum))
            return default
        return float(value)

    def name(self, seen: set[str]) -> str | None:
        name = self.string("name", NAME_EXPECT, required=True)
        if name is None:
            return None
        if not NAME.match(name) or name in seen:
            self.add("name", NAME_EXPECT + ("" if name not in seen else f" ({name!r} is taken)"))
            return None
        seen.add(name)
        return name

    def url(self, key: str = "url", *, required: bool = True) -> str | None:
        expected = "an http:// or https:// URL with a host"
        value = self.string(key, expected, required=required)
        if value is None:
            return None
        if not value.isascii() or any(c.isspace() or not c.isprintable() for c in value):
            # http.client cannot send such a URL: every delivery would fail forever.
            self.add(key, expected + ", in printable ASCII without spaces "
                     "(percent-encode anything else)")
            return None
        try:
            parts = urlsplit(value)
            _ = parts.port  # raises for a port outside 0-65535
        except ValueError as e:  # a bracketed host that is no IPv6 address
            self.add(key, f"{expected} ({e})")
            return None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            self.add(key, expected)
            return None
        return value

    def ca_file(self, base: Path, url: str | None) -> Path | None:
        value = self.string("ca_file", "the path of a PEM CA bundle")
        if value is None:
            return None
        path = _relative(base, value)
        if not path.is_file():
            self.add("ca_file", f"an existing PEM CA bundle (not found: {path})")
        elif url is not None and urlsplit(url).scheme != "https":
            self.add("ca_file", "to be set only with an https:// url")
        return path


def _tables(problems: Problems, notify: dict[str, Any], kind: str) -> list[tuple[str, Any]]:
    value = notify.get(kind, [])
    if not isinstance(value, list):
        problems.add(f"notify.{kind}", f"an array of tables ([[notify.{kind}]])")
        return []
    return [(f"notify.{kind}[{i}]", t) for i, t in enumerate(value)]


def _secret(e: _Entry, base: Path) -> SecretSource | None:
    """Where the secret is; not read here (see the module docstring)."""
    has_file, has_env = "secret_file" in e.table, "secret_env" in e.table
    if has_file and has_env:
        e.add("secret_env", "not to be set together with secret_file")
        return None
    if not has_file and not has_env:
        e.add("secret_file", "one of secret_file or secret_env (the HMAC secret)")
        return None
    if has_file:
        value = e.string("secret_file", "the path of a file holding the shared secret")
        if value is None:
            return None
        return SecretSource(f"{e.where}.secret_file", file=_relative(base, value))
    variable = e.string("secret_env", "the name of an environment variable")
    if variable is None:
        return None
    return SecretSource(f"{e.where}.secret_env", env=variable)


def _read_secret(source: SecretSource, problems: Problems) -> bytes | None:
    if source.file is not None:
        try:
            # Trailing newlines come from editors and `echo`, not from the secret.
            secret = source.file.read_bytes().rstrip(b"\r\n")
        except OSError as err:
            problems.add(source.key, f"a readable secret file ({source.file}: {err.strerror})")
            return None
        if not secret:
            problems.add(source.key, f"a non-empty secret file ({source.file} is empty)")
            return None
        return secret
    env_secret = os.environ.get(source.env or "", "")
    if not env_secret:
        problems.add(source.key,
                     f"an environment variable that is set and not empty ({source.env})")
        return None
    return env_secret.encode()


def read_secrets(settings: NotifySettings, path: Path | None = None) -> dict[str, bytes]:
    """Every webhook's secret, by channel name, read now.

    Args:
        path: the config file, to name in the error.

    Raises:
        ConfigError: naming the key of every secret that cannot be read (a file
            missing, unreadable or empty; an environment variable unset or empty).
    """
    problems = Problems(path or Path("<config>"))
    out = {}
    for w in settings.webhooks:
        secret = _read_secret(w.secret, problems)
        if secret is not None:
            out[w.name] = secret
    problems.raise_if_any()
    return out


def _webhook(problems: Problems, where: str, table: dict[str, Any], base: Path,
             seen: set[str]) -> WebhookSettings | None:
    e = _Entry(problems, table, where, {"name", "url", "secret_file", "secret_env",
                                        "timeout_s", "ca_file"})
    name = e.name(seen)
    url = e.url()
    secret = _secret(e, base)
    timeout = e.seconds("timeout_s", 10.0, 0.1)
    ca_file = e.ca_file(base, url)
    if name is None or url is None or secret is None:
        return None
    return WebhookSettings(name, url, secret, timeout, ca_file)


def _alertmanager(problems: Problems, where: str, table: dict[str, Any], base: Path,
                  seen: set[str]) -> AlertmanagerSettings | None:
    e = _Entry(problems, table, where, {"name", "url", "resend_s", "timeout_s", "ca_file",
                                        "generator_url"})
    name = e.name(seen)
    url = e.url()
    if url is not None and urlsplit(url).path.rstrip("/").endswith("/api/v2/alerts"):
        e.add("url", "Alertmanager's base URL, without /api/v2/alerts")
        url = None
    resend = e.seconds("resend_s", 60.0, MIN_RESEND_S, MAX_RESEND_S)
    timeout = e.seconds("timeout_s", 10.0, 0.1)
    ca_file = e.ca_file(base, url)
    generator = e.url("generator_url", required=False)
    if name is None or url is None:
        return None
    return AlertmanagerSettings(name, url, resend, timeout, ca_file, generator)


def _command(problems: Problems, where: str, table: dict[str, Any], base: Path,
             seen: set[str]) -> CommandSettings | None:
    e = _Entry(problems, table, where, {"name", "argv", "timeout_s"})
    name = e.name(seen)
    argv = table.get("argv")
    expected = "a non-empty array of strings (program and arguments, no shell)"
    if not isinstance(argv, list) or not argv or not all(
            isinstance(a, str) for a in argv) or not argv[0]:
        e.add("argv", expected)
        argv = None
    elif "/" in argv[0]:
        path = _relative(base, argv[0])
        if not (path.is_file() and os.access(path, os.X_OK)):
            e.add("argv", f"argv[0] to be an executable file (not found: {path})")
            argv = None
        else:
            argv = [str(path), *argv[1:]]
    elif shutil.which(argv[0]) is None:
        # Looked up on PATH again at every run; checked now so a typo shows at start.
        e.add("argv", f"argv[0] to be a program on PATH (not found: {argv[0]})")
        argv = None
    timeout = e.seconds("timeout_s", 30.0, 0.1)
    if name is None or argv is None:
        return None
    return CommandSettings(name, tuple(argv), timeout)


def parse_notify_config(raw: dict[str, Any], problems: Problems, base: Path) -> NotifySettings:
    """Validate the ``[notify]`` table of a parsed config document.

    Args:
        raw: the whole parsed TOML document (the table is ``raw["notify"]``).
        problems: where every bad key is reported, as ``notify.webhook[0].url``.
        base: the config file's directory; relative paths are taken from there.

    Returns:
        the settings; a channel with any problem is left out (and reported).
    """
    table = raw.get("notify", {})
    if not isinstance(table, dict):
        problems.add("notify", "a table")
        return NotifySettings()
    check_keys(problems, table, ("poll_s", "webhook", "alertmanager", "command"), "notify")
    poll = table.get("poll_s", 1.0)
    if not in_range(poll, MIN_POLL_S, MAX_POLL_S):
        problems.add("notify.poll_s", range_text("a number of seconds", MIN_POLL_S, MAX_POLL_S))
        poll = 1.0
    seen: set[str] = set()
    webhooks, alertmanagers, commands = [], [], []
    for where, t in _tables(problems, table, "webhook"):
        if not isinstance(t, dict):
            problems.add(where, "a table")
        elif (w := _webhook(problems, where, t, base, seen)) is not None:
            webhooks.append(w)
    for where, t in _tables(problems, table, "alertmanager"):
        if not isinstance(t, dict):
            problems.add(where, "a table")
        elif (a := _alertmanager(problems, where, t, base, seen)) is not None:
            alertmanagers.append(a)
    for where, t in _tables(problems, table, "command"):
        if not isinstance(t, dict):
            problems.add(where, "a table")
        elif (c := _command(problems, where, t, base, seen)) is not None:
            commands.append(c)
    return NotifySettings(float(poll), tuple(webhooks), tuple(alertmanagers), tuple(commands))


def build_channels(settings: NotifySettings, path: Path | None = None) -> dict[str, Channel]:
    """The configured channels by name, with the webhooks' secrets read now.

    Args:
        path: the config file, to name in an error about a secret.

    Raises:
        ConfigError: if a webhook's secret cannot be read (see :func:`read_secrets`).
        OSError, ssl.SSLError: if a ``ca_file`` cannot be loaded.
    """
    secrets = read_secrets(settings, path)
    out: dict[str, Channel] = {}
    # Each kind's HTTP client or process machinery is loaded only when one is configured.
    if settings.webhooks:
        from agent.notify.webhook import WebhookChannel

        for w in settings.webhooks:
            out[w.name] = WebhookChannel(w.name, w.url, secrets[w.name],
                                         timeout_s=w.timeout_s, ca_file=w.ca_file)
    if settings.alertmanagers:
        from agent.notify.alertmanager import AlertmanagerChannel

        for a in settings.alertmanagers:
            out[a.name] = AlertmanagerChannel(a.name, a.url, resend_s=a.resend_s,
                                              timeout_s=a.timeout_s, ca_file=a.ca_file,
                                              generator_url=a.generator_url)
    if settings.commands:
        from agent.notify.command import CommandChannel

        for c in settings.commands:
            out[c.name] = CommandChannel(c.name, c.argv, timeout_s=c.timeout_s)
    return out
