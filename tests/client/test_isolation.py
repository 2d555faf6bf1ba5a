"""flopledger-client runs inside every training job: it imports the standard library
only (the adapters import the library they serve, and nothing else outside it), and
its distribution declares no dependencies."""

from __future__ import annotations

import ast
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.paths import REPO

CLIENT = REPO / "client"
PACKAGE = CLIENT / "flopledger_client"
# The one library each adapter serves, imported only when that adapter is.
ADAPTER_IMPORTS = {
    "transformers.py": {"transformers"},
    "lightning.py": {"lightning", "pytorch_lightning"},
}


def imported_top_levels(tree: ast.AST) -> Iterator[tuple[int, str]]:
    """(line, top-level module) for every absolute import, at any depth."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.lineno, node.module.split(".")[0]


def modules() -> list[Path]:
    found = sorted(PACKAGE.rglob("*.py"))
    assert found, f"no modules under {PACKAGE}"
    return found


@pytest.mark.parametrize("path", modules(), ids=lambda p: p.name)
def test_imports_only_the_standard_library(path: Path) -> None:
    allowed = sys.stdlib_module_names | {"flopledger_client"} | ADAPTER_IMPORTS.get(path.name,
                                                                                      set())
    outside = [f"{path.name}:{line}: {module}"
               for line, module in imported_top_levels(ast.parse(path.read_text()))
               if module not in allowed]
    assert outside == []


def test_adapters_import_the_library_they_serve() -> None:
    # Otherwise the exemptions above would hide nothing and could be dropped.
    for name, libraries in ADAPTER_IMPORTS.items():
        found = {m for _, m in imported_top_levels(ast.parse((PACKAGE / name).read_text()))}
        assert libraries <= found, name


def test_the_package_root_imports_no_adapter() -> None:
    tree = ast.parse((PACKAGE / "__init__.py").read_text())
    names = {node.module for node in ast.walk(tree)
             if isinstance(node, ast.ImportFrom) and node.module}
    adapters = {f"flopledger_client.{name.removesuffix('.py')}" for name in ADAPTER_IMPORTS}
    assert names.isdisjoint(adapters)


def test_distribution_declares_no_dependencies() -> None:
    project = tomllib.loads((CLIENT / "pyproject.toml").read_text())["project"]
    assert project["name"] == "flopledger-client"
    assert project["dependencies"] == []
    assert "optional-dependencies" not in project
    assert project["requires-python"] == ">=3.11"


def test_distribution_ships_its_type_marker() -> None:
    setuptools = tomllib.loads((CLIENT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert (PACKAGE / "py.typed").is_file()
    assert "py.typed" in setuptools["package-data"]["flopledger_client"]


def test_the_client_checks_what_the_agent_accepts() -> None:
    """The client keeps its own copy of the format's value sets (it cannot import the
    agent); they must be the agent's, or a trainer's declaration is refused late."""
    from flopledger_client import validate

    from agent.accounting.names import MAX_NAME_CHARS, UNATTRIBUTED_RUN_ID
    from agent.accounting.runs import CATEGORIES, RECOMPUTE_MODES
    from agent.sources import spool
    from agent.sources.specs import MATMUL_PRECISIONS

    assert validate.CATEGORIES == CATEGORIES == spool.CATEGORIES
    assert set(validate.PRECISIONS) == set(MATMUL_PRECISIONS) == set(spool.PRECISIONS)
    assert validate.RECOMPUTE_MODES == tuple(RECOMPUTE_MODES) == tuple(spool.RECOMPUTE_MODES)
    assert validate.MAX_NAME_CHARS == MAX_NAME_CHARS
    assert validate.RESERVED_NAME == UNATTRIBUTED_RUN_ID
