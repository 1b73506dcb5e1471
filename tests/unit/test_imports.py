"""The dependency rules of the tree, read from the imports of every module (lazy ones included).

- support code (whisperx_service/, runners/, models/, deploy/) never imports the app, service.py;
- a runner never imports another runner, nor models/ (build-time tooling);
- nothing on the serving path (whisperx_service/, runners/, service.py) imports models/;
- no import circle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.data import PROJECT

PACKAGES = ("whisperx_service", "runners", "models", "deploy")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PROJECT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    found = {"service": PROJECT / "service.py"}
    for package in PACKAGES:
        for path in sorted((PROJECT / package).rglob("*.py")):
            found[_module_name(path)] = path
    return found


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """Project modules that `name` imports anywhere in its body (inside functions too)."""
    is_package = path.name == "__init__.py"
    package = name if is_package else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".") if package else []
                anchor = anchor[:len(anchor) - (node.level - 1)] if node.level > 1 else anchor
                base = ".".join([*anchor, *([base] if base else [])])
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        for target in targets:
            while target and target not in MODULES:
                target = target.rpartition(".")[0]
            if target and target != name:
                out.add(target)
    return out


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _top(name: str) -> str:
    return name.split(".")[0]


def test_the_tree_is_read() -> None:
    assert {"service", "runners.asr", "whisperx_service.pipeline", "models.sources"} <= set(GRAPH)
    assert "whisperx_service.pipeline" in GRAPH["service"]


@pytest.mark.parametrize("name", sorted(n for n in GRAPH if n != "service"))
def test_support_code_never_imports_the_app(name: str) -> None:
    assert "service" not in GRAPH[name], f"{name} imports service.py"


@pytest.mark.parametrize("name", sorted(n for n in GRAPH if _top(n) == "runners"))
def test_a_runner_imports_no_other_runner_and_no_build_tooling(name: str) -> None:
    bad = {target for target in GRAPH[name] if _top(target) == "models"
           or (_top(target) == "runners" and target not in (name, "runners"))}
    assert not bad, f"{name} imports {sorted(bad)}"


@pytest.mark.parametrize("name", sorted(n for n in GRAPH if _top(n) in ("whisperx_service", "runners", "service")))
def test_the_serving_path_never_imports_models(name: str) -> None:
    bad = {target for target in GRAPH[name] if _top(target) == "models"}
    assert not bad, f"{name} imports {sorted(bad)}"


def test_no_import_circle() -> None:
    seen: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(name: str) -> None:
        seen[name] = 1
        path.append(name)
        for target in sorted(GRAPH[name]):
            if seen.get(target) == 1:
                cycle = path[path.index(target):] + [target]
                pytest.fail("import circle: " + " -> ".join(cycle))
            if target not in seen:
                visit(target)
        path.pop()
        seen[name] = 2

    for name in sorted(GRAPH):
        if name not in seen:
            visit(name)
