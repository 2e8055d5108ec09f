"""The package's imports point one way: down the layers of sae_harness/__init__.py, no cycle.

Every import counts, those inside functions too (a lazy import is still an arrow)."""

import ast
from pathlib import Path

import pytest

from conftest import REPO

pytestmark = pytest.mark.unit

LAYERS = ("errors", "records", "hardware", "data", "training", "evals", "run")
"""Lowest first: a module may import from its own layer or the ones before it."""


def import_graph(package: Path) -> dict[str, set[str]]:
    """Module (dotted, without the package name) -> the package's modules it imports."""
    graph: dict[str, set[str]] = {}
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(package).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                if node.module != package.name and not node.module.startswith(package.name + "."):
                    continue
                source = node.module[len(package.name) + 1:]
                folder = package.joinpath(*source.split(".")) if source else package
                for alias in node.names:  # from sae_harness.records import run_directory: a module
                    if (folder / f"{alias.name}.py").is_file() or (folder / alias.name).is_dir():
                        targets.add(f"{source}.{alias.name}" if source else alias.name)
                    else:
                        targets.add(source)
            elif isinstance(node, ast.Import):
                targets |= {a.name[len(package.name) + 1:] for a in node.names
                            if a.name.startswith(package.name + ".")}
        graph[name] = targets
    return graph


def layer(module: str) -> int:
    return LAYERS.index(module.split(".")[0])


def arrows_up(graph: dict[str, set[str]]) -> list[str]:
    return sorted(f"{source} -> {target}" for source, targets in graph.items() if source
                  for target in targets if layer(target) > layer(source))


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (or a module importing itself)."""
    index, low, on_stack, stack, found, counter = {}, {}, set(), [], [], [0]

    def visit(node):
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in graph.get(node, ()):
                found.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return found


def test_every_module_is_in_a_layer():
    graph = import_graph(REPO / "sae_harness")
    for module in [m for m in graph if m] + sorted(set().union(*graph.values())):
        assert module.split(".")[0] in LAYERS, f"{module} is in no layer of {LAYERS}"


def test_imports_point_down_the_layers():
    assert arrows_up(import_graph(REPO / "sae_harness")) == []


def test_no_import_cycle():
    assert cycles(import_graph(REPO / "sae_harness")) == []


def test_the_checks_catch_an_arrow_up_and_a_cycle(tmp_path):
    package = tmp_path / "sae_harness"
    for folder in ("records", "data"):
        (package / folder).mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "records" / "run_directory.py").write_text("from sae_harness.data.presets import Preset\n")
    (package / "data" / "presets.py").write_text(
        "def f():\n    from sae_harness.records import run_directory\n")
    graph = import_graph(package)
    assert arrows_up(graph) == ["records.run_directory -> data.presets"]
    assert cycles(graph) == [["data.presets", "records.run_directory"]]
    (package / "records" / "run_directory.py").write_text("")
    assert arrows_up(import_graph(package)) == [] and cycles(import_graph(package)) == []
