"""The cluster service's ``/metrics`` behind the agent's web config: TLS and basic auth
from ``[web] config_file``, as a real ``flopledger cluster`` process serves them; a web
config that does not load stops the start with exit 2."""

from __future__ import annotations

import functools
import ssl
from pathlib import Path

from tests.agentproc import free_port
from tests.cli import conftest as cli_conftest
from tests.cli.conftest import Flopledger
from tests.cluster import nodes
from tests.cluster.test_replicas import replica, wait_until
from tests.ledger.cluster_nodes import replicate
from tests.pki import bcrypt_hash, client_context, connection_refused, fetch, make_pki

flopledger = cli_conftest.flopledger


def test_metrics_over_tls_with_basic_auth(tmp_path: Path, pg_url: str) -> None:
    for path in nodes.write_nodes(tmp_path).values():
        replicate(path, pg_url)
    pki = make_pki(tmp_path / "pki")
    (tmp_path / "web.yml").write_text(f"""tls_server_config:
  cert_file: {pki.server_cert}
  key_file: {pki.server_key}
basic_auth_users:
  prometheus: {bcrypt_hash("scrape-secret")}
""")
    config = tmp_path / "cluster.toml"
    config.write_text(f'[cluster]\nurl = "{pg_url}"\nevaluate_s = 1\n'
                      f'[web]\nconfig_file = "web.yml"\n')
    port = free_port()
    url = f"https://127.0.0.1:{port}/metrics"
    context = client_context(pki)

    def answers() -> bool:
        try:
            status, _, body = fetch(url, user="prometheus", password="scrape-secret",
                                    context=context)
        except OSError:
            return False
        return status == 200 and b"flopledger_cluster_run_flop_total{" in body

    with replica(config, port, tmp_path / "cluster.log") as proc:
        wait_until("the service answers over TLS", answers, [proc])
        assert fetch(url, context=context)[0] == 401
        assert fetch(url, user="prometheus", password="wrong", context=context)[0] == 401
        # Plain HTTP on the TLS port gets no metrics; a client that does not trust the
        # service's CA refuses it.
        connection_refused(functools.partial(
            fetch, f"http://127.0.0.1:{port}/metrics", user="prometheus",
            password="scrape-secret"), "plain HTTP")
        connection_refused(functools.partial(
            fetch, url, user="prometheus", password="scrape-secret",
            context=ssl.create_default_context()), "a client without the service's CA")


def test_a_web_config_that_does_not_load_exits_2(tmp_path: Path,
                                                 flopledger: Flopledger) -> None:
    (tmp_path / "web.yml").write_text("basic_auth_users:\n  prometheus: not-a-hash\n")
    config = tmp_path / "cluster.toml"
    config.write_text('[cluster]\nurl = "postgresql://flopledger@127.0.0.1:1/x"\n'
                      '[web]\nconfig_file = "web.yml"\n')
    status, out, err = flopledger("cluster", "--config", str(config), "--listen",
                                  f"127.0.0.1:{free_port()}", "--exit-after", "1")
    assert (status, out) == (2, "")
    assert str(tmp_path / "web.yml") in err
    assert "basic_auth_users" in err
    assert "Traceback" not in err
    missing = tmp_path / "other.toml"
    missing.write_text('[cluster]\nurl = "postgresql://flopledger@127.0.0.1:1/x"\n'
                       '[web]\nconfig_file = "absent.yml"\n')
    status, _, err = flopledger("cluster", "--config", str(missing))
    assert status == 2
    assert "web.config_file: expected an existing web-config file" in err
