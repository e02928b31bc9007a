"""The package's imports point down only: every import inside edgekit/, at module level or inside a
function, goes to a layer below the importing one, and no group of modules imports itself around.
Imports under `if TYPE_CHECKING:` only name types for annotations and never run, so they are left
out."""

from __future__ import annotations

import ast
from pathlib import Path

import edgekit

PACKAGE = Path(edgekit.__file__).parent

# Lowest first. A unit is a top-level module or subpackage of edgekit; units on one line are
# siblings that must not import each other.
LAYERS: list[tuple[str, ...]] = [
    ("errors",),
    ("families",),
    ("spec",),
    ("rope", "evaluate"),
    ("artifact", "reference"),
    ("sources", "device_profiles"),
    ("testing",),
    ("runtimes",),
    ("generation",),
    ("quant",),
    ("distill",),
    ("exporters",),
    ("serve", "deploy"),
    ("cli",),
    ("__init__", "__main__"),
]
LEVEL = {unit: level for level, units in enumerate(LAYERS) for unit in units}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, name: str | None = None) -> set[str]:
    """The edgekit modules `path` (module `name`) imports, resolved to absolute dotted names."""
    name = name or module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(_without_type_checking(ast.parse(path.read_text(), str(path)))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            for alias in node.names:  # `from . import x` may name a module
                submodule = f"{target}.{alias.name}"
                found.add(submodule if _is_module(submodule) else target)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {m for m in found if m == "edgekit" or m.startswith("edgekit.")}


def _without_type_checking(tree: ast.Module) -> ast.Module:
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            node.body = []
    return tree


def _is_module(dotted: str) -> bool:
    relative = Path(*dotted.split(".")[1:])
    return (PACKAGE / relative).with_suffix(".py").is_file() or (PACKAGE / relative / "__init__.py").is_file()


def unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def import_graph() -> dict[str, set[str]]:
    return {module_name(p): imports_of(p) for p in PACKAGE.rglob("*.py")}


def test_every_unit_has_a_layer():
    units = {unit(m) for m in import_graph()}
    assert units <= set(LEVEL), f"give these a layer in LAYERS: {sorted(units - set(LEVEL))}"


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    return [
        f"{source} imports {target} "
        f"({unit(source)} is layer {LEVEL[unit(source)]}, {unit(target)} is {LEVEL[unit(target)]})"
        for source, targets in graph.items()
        for target in targets
        if unit(source) != unit(target) and LEVEL[unit(target)] >= LEVEL[unit(source)]
    ]


def test_imports_point_down():
    upward = upward_imports(import_graph())
    assert not upward, "\n".join(upward)


def test_no_import_cycles():
    graph = import_graph()
    cycles = [c for c in strongly_connected(graph) if len(c) > 1]
    assert not cycles, f"modules that import each other around: {cycles}"


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's components of the module graph (edges to a package count as to its __init__)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in graph:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            components.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return components


def test_the_checker_sees_a_lazy_relative_upward_import_and_a_cycle(tmp_path):
    bad = tmp_path / "fake.py"
    bad.write_text(
        "from typing import TYPE_CHECKING\n\nfrom ..errors import EdgekitError\n\n"
        "if TYPE_CHECKING:\n    from ..cli import app\n\n"
        "def f():\n    from ..exporters import pipeline\n"
    )
    found = imports_of(bad, "edgekit.runtimes.fake")
    assert found == {"edgekit.errors", "edgekit.exporters.pipeline"}
    assert upward_imports({"edgekit.runtimes.fake": found}) == [
        "edgekit.runtimes.fake imports edgekit.exporters.pipeline (runtimes is layer 7, exporters is 11)"
    ]
    assert [c for c in strongly_connected({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) if len(c) > 1] == [
        ["a", "b", "c"]
    ]
