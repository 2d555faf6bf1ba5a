"""Fixtures shared across the suite."""

from __future__ import annotations

import pytest

from agent.sources.specs import SpecTable, load_spec_table
from tests.pg import pg_server, pg_url  # noqa: F401  (registered for every directory)
from tests.pki import Pki, make_pki


@pytest.fixture(scope="session")
def spec_table() -> SpecTable:
    """The checked-in spec table (agent/data/gpus.toml)."""
    return load_spec_table()


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A CA with server and client certificates, made once per session."""
    return make_pki(tmp_path_factory.mktemp("pki"))
