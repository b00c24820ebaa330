"""The package's import graph: no cycles, and dependencies that point one way (issue 16).

The graph is read from the source with ``ast``: every ``import hqtd...`` and ``from hqtd... import``
statement of ``hqtd/**.py``, at any depth, so the imports inside functions (deferred to keep a
command's start fast) and under ``if TYPE_CHECKING:`` count as well. A deferred import still makes
the two modules depend on each other, and an annotation-only one still says which layer knows
which; a cycle through either is a design cycle even when Python happens to load it.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "hqtd"

#: The layers, lowest first; a module may import its own layer's modules and lower layers only.
#: ``base`` holds what every layer shares (config schemas, errors, file IO, device plumbing).
LAYERS = {
    "base": (
        "hqtd", "hqtd._torchvision_guard", "hqtd.config", "hqtd.errors", "hqtd.io",
        "hqtd.determinism", "hqtd.runtime", "hqtd.codedeps", "hqtd.provenance",
    ),
    "data": ("hqtd.data",),
    "models": ("hqtd.models",),
    "adapt": ("hqtd.adapt",),
    "train": ("hqtd.train", "hqtd.training", "hqtd.evaluate", "hqtd.metrics", "hqtd.predict"),
    "report": ("hqtd.report", "hqtd.grid", "hqtd.dvcfile"),
    "cli": ("hqtd.cli",),
}  # fmt: skip
ORDER = list(LAYERS)


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, modules: set[str]) -> set[str]:
    """The hqtd modules ``path`` imports anywhere in its body (``from hqtd.x import y`` counts as
    ``hqtd.x.y`` when that is a module, else as ``hqtd.x``)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            for alias in node.names:
                child = f"{node.module}.{alias.name}"
                found.add(child if child in modules else node.module)
    return {name for name in found if name in modules}


def import_graph() -> dict[str, set[str]]:
    paths = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    return {name: imported_modules(path, set(paths)) - {name} for name, path in paths.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component of more than one module (each holds a cycle), sorted
    (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for child in sorted(graph[node]):
            if child not in index:
                visit(child)
                low[node] = min(low[node], low[child])
            elif child in stack:
                low[node] = min(low[node], index[child])
        if low[node] == index[node]:
            component = []
            while not component or component[-1] != node:
                component.append(stack.pop())
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


def layer(module: str) -> str:
    """The layer of ``module``: the layer with the longest matching prefix."""
    matches = [
        (len(prefix), name)
        for name, prefixes in LAYERS.items()
        for prefix in prefixes
        if module == prefix or module.startswith(prefix + ".")
    ]
    assert matches, f"{module}: in no layer of LAYERS (add it to the layer it belongs to)"
    return max(matches)[1]


def test_the_graph_sees_deferred_and_type_checking_imports():
    graph = import_graph()
    assert "hqtd.train" in graph["hqtd.cli"]  # imported inside a function
    assert "hqtd.models.deeplabv2" in graph["hqtd.adapt.step"]  # under TYPE_CHECKING


def test_cycle_finder_reports_every_cycle():
    graph = {"a": {"b"}, "b": {"a"}, "c": {"d"}, "d": {"e"}, "e": {"c"}, "f": {"a"}}
    assert cycles(graph) == [["a", "b"], ["c", "d", "e"]]


def test_no_import_cycles():
    found = cycles(import_graph())
    assert not found, "import cycles in hqtd: " + "; ".join(" <-> ".join(c) for c in found)


def test_dependencies_point_one_way():
    """data -> models -> adapt -> train/evaluate -> report -> cli: no module imports a higher
    layer."""
    upward = [
        f"{module} ({layer(module)}) imports {target} ({layer(target)})"
        for module, targets in sorted(import_graph().items())
        for target in sorted(targets)
        if ORDER.index(layer(target)) > ORDER.index(layer(module))
    ]
    assert not upward, "imports against the layering:\n" + "\n".join(upward)
