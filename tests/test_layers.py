"""The layering rule: a module imports only its own layer or lower ones.

Layers, lowest first: sources < accounting < ledger < compliance, notify < replay,
reports < exporters < cli and the entry points (daemon, sampler, config). The package
root, ``configfile`` (the one TOML reader) and ``figures`` (number formatting) sit
below everything.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.paths import REPO

FOUNDATION = 0
ENTRY = 7
LAYERS: dict[str, int] = {
    "agent": FOUNDATION,
    "agent.configfile": FOUNDATION,
    "agent.figures": FOUNDATION,
    "agent.sources": 1,
    "agent.accounting": 2,
    "agent.ledger": 3,
    "agent.compliance": 4,
    "agent.notify": 4,
    "agent.replay": 5,
    "agent.reports": 5,
    "exporters": 6,
    "agent.cli": ENTRY,
    "agent.cluster": ENTRY,
}
PACKAGES = ("agent", "exporters")


def layer_of(module: str) -> int:
    """The layer of a dotted module name: its longest prefix in :data:`LAYERS`; any
    other module directly under ``agent`` is an entry point."""
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        prefix = ".".join(parts[:n])
        if prefix in LAYERS and (n > 1 or len(parts) == 1 or prefix != "agent"):
            return LAYERS[prefix]
    return ENTRY


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(module: str, tree: ast.AST, is_package: bool) -> Iterator[tuple[int, str]]:
    """(line, absolute module) for every import of this project, at any depth (lazy
    imports inside functions count too)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                if not is_package:
                    base = base[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            yield node.lineno, target
            # ``from agent import figures`` imports the module agent.figures
            for alias in node.names:
                yield node.lineno, f"{target}.{alias.name}"


def upward_imports(path: Path, source: str | None = None) -> list[str]:
    module = module_name(path)
    tree = ast.parse(source if source is not None else path.read_text(), str(path))
    mine = layer_of(module)
    problems = []
    for line, target in imported_modules(module, tree, path.name == "__init__.py"):
        if target.split(".")[0] not in PACKAGES or _is_attribute(target):
            continue
        theirs = layer_of(target)
        if theirs > mine:
            problems.append(f"{path.relative_to(REPO)}:{line}: {module} (layer {mine}) "
                            f"imports {target} (layer {theirs})")
    return problems


def _is_attribute(target: str) -> bool:
    """``from agent.x import Name`` also yields ``agent.x.Name``: a class or function,
    not a module; only names that are modules or packages on disk are checked."""
    path = REPO.joinpath(*target.split("."))
    return not (path.with_suffix(".py").is_file() or (path / "__init__.py").is_file())


def project_modules() -> list[Path]:
    return sorted(p for package in PACKAGES for p in (REPO / package).rglob("*.py"))


def test_every_module_imports_only_its_layer_or_lower() -> None:
    problems = [p for path in project_modules() for p in upward_imports(path)]
    assert problems == []


def test_every_module_has_a_layer() -> None:
    # A new top-level folder must be placed in LAYERS, not default to the entry layer.
    for path in project_modules():
        parts = path.relative_to(REPO).parts
        if parts[0] == "agent" and len(parts) > 2:
            assert f"agent.{parts[1]}" in LAYERS, path


@pytest.mark.parametrize(("module", "source", "flagged"), [
    ("agent/sources/example.py", "from agent.accounting.runs import RunMeta\n", True),
    ("agent/sources/example.py", "def f():\n    import agent.daemon\n", True),
    ("agent/compliance/example.py", "from agent import config\n", True),
    ("agent/compliance/example.py", "from ..ledger import store\n", False),
    ("agent/ledger/example.py", "from ..compliance import thresholds\n", True),
    ("exporters/example.py", "from agent.compliance.state import ThresholdState\n", False),
    ("agent/accounting/example.py", "from agent.configfile import Problems\n", False),
    ("agent/notify/example.py", "from agent.compliance import thresholds\n", False),
])
def test_the_check_flags_upward_imports(module: str, source: str, flagged: bool) -> None:
    assert bool(upward_imports(REPO / module, source)) is flagged
