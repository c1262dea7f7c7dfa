"""Dependencies point down: libs never import services; services never import each other."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _imports(package_dir: Path) -> set[str]:
    found = set()
    for path in package_dir.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module.split(".")[0])
    return found


def _packages(parent: str) -> dict[str, Path]:
    return {
        pkg.name: pkg
        for member in (REPO / parent).iterdir()
        if (member / "src").is_dir()
        for pkg in (member / "src").iterdir()
        if pkg.is_dir() and pkg.name.startswith("stepbus_")
    }


def test_libs_never_import_services_or_devtools() -> None:
    forbidden = set(_packages("services")) | {"stepbus_devtools"}
    for name, path in _packages("libs").items():
        assert not (_imports(path) & forbidden), f"{name} imports {_imports(path) & forbidden}"


def test_services_never_import_each_other_or_the_test_double() -> None:
    services = _packages("services")
    assert {"stepbus_planner", "stepbus_tool_executor", "stepbus_gateway"} <= set(services)
    for name, path in services.items():
        others = (set(services) - {name}) | {"stepbus_devtools"}
        assert not (_imports(path) & others), f"{name} imports {_imports(path) & others}"
