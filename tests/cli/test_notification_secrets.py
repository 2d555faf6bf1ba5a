"""Notification secrets are needed only to send: every command that reads the ledger
works with a config whose webhook secret is unset or missing; ``run`` refuses at start,
naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cli.conftest import Flopledger

UNSET = "FLOPLEDGER_TEST_UNSET_SECRET"

READ_ONLY = [
    ("status",),
    ("report", "--run", "pt"),
    ("report", "--model", "chat"),
    ("runs",),
    ("show", "pt"),
    ("models",),
    ("verify",),
    ("notifications", "dead"),
]

SECRETS = {
    "secret_env": (f'secret_env = "{UNSET}"', f"({UNSET})"),
    "secret_file": ('secret_file = "no-such-webhook.secret"', "no-such-webhook.secret"),
}


def config_with_webhook(directory: Path, state_dir: Path, secret_line: str) -> Path:
    config = directory / "agent.toml"
    config.write_text(
        f'[agent]\nstate_dir = "{state_dir}"\nlisten = "127.0.0.1:0"\nsource = "simulated"\n'
        f'[[notify.webhook]]\nname = "compliance"\nurl = "https://hooks.example/flop"\n'
        f"{secret_line}\n")
    return config


@pytest.mark.parametrize("secret", sorted(SECRETS))
@pytest.mark.parametrize("command", READ_ONLY, ids=lambda c: "-".join(c))
def test_read_only_commands_need_no_notification_secret(
        command: tuple[str, ...], secret: str, ledger_path: Path, tmp_path: Path,
        flopledger: Flopledger, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(UNSET, raising=False)
    # No --ledger: the ledger is found through the config's state_dir, so the
    # config (with its [notify] table) is loaded.
    config = config_with_webhook(tmp_path, ledger_path.parent, SECRETS[secret][0])
    status, out, err = flopledger(*command, "--config", str(config))
    assert status == 0, err
    assert "notify" not in err
    assert out


@pytest.mark.parametrize("secret", sorted(SECRETS))
def test_run_refuses_a_secret_it_cannot_read(
        secret: str, tmp_path: Path, flopledger: Flopledger,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(UNSET, raising=False)
    line, named = SECRETS[secret]
    state_dir = tmp_path / "var"
    config = config_with_webhook(tmp_path, state_dir, line)
    status, _, err = flopledger("run", "--config", str(config))
    assert status == 2
    assert f"notify.webhook[0].{secret}: expected " in err
    assert named in err
    assert str(config) in err
    assert "Traceback" not in err
    assert not state_dir.exists(), "run created state before refusing"
