"""The package's layers point down, and no import closes a cycle (function-level imports count)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import distill

PACKAGE = Path(distill.__file__).parent

# Bottom to top; a module may import its own layer and the layers below. A module is placed by
# its longest listed prefix.
LAYERS = [
    ["distill", "distill.schema", "distill.problems", "distill.registry", "distill.storage", "distill.hardware",
     "distill.lineage"],
    # Catalogues and pure functions; the backends' registry is one, and recipes name backends.
    ["distill.teachers", "distill.models", "distill.licensing", "distill.prompts", "distill.verifiers", "distill.probes",
     "distill.filters", "distill.sandbox", "distill.backends", "distill.ray_runtime", "distill.chat_templates"],
    ["distill.recipe"],
    ["distill.run", "distill.training", "distill.tracking"],
    ["distill.stages", "distill.lineage_store"],
    ["distill.pipeline", "distill.jobs", "distill.usage", "distill.serve"],
    ["distill.cli"],
]
BOTTOM = LAYERS[0]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports(path: Path, name: str, known: set[str]) -> set[str]:
    """The distill modules a file imports anywhere in it (top level or inside functions)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        for t in targets:
            while t and t not in known:  # `from distill.stages import sample` names a module; `import a.b.c` its parents
                t = t.rpartition(".")[0]
            # A package loading its own modules is not a cycle: a module's package is always loaded first.
            if t and t != name and not (path.name == "__init__.py" and t.startswith(name + ".")):
                found.add(t)
    return found


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports(path, name, set(mods)) for name, path in mods.items()}


def layer_of(name: str) -> int:
    best = None
    for i, layer in enumerate(LAYERS):
        for prefix in layer:
            if (name == prefix or (name.startswith(prefix + ".") and prefix != "distill")) and (best is None or len(prefix) > len(best[1])):
                best = (i, prefix)
    assert best is not None, f"{name} is in no layer: add it to LAYERS"
    return best[0]


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
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
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_the_import_graph_is_read():
    edges = graph()
    assert len(edges) > 50
    assert "distill.stages.sample" in edges["distill.pipeline"]
    assert "distill.problems" in edges["distill.teachers"]  # a function-level import counts


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycle():
    assert cycles(graph()) == []


def test_every_import_points_down_or_across():
    wrong = [f"{a} (layer {layer_of(a)}) imports {b} (layer {layer_of(b)})"
             for a, targets in graph().items() for b in sorted(targets) if layer_of(b) > layer_of(a)]
    assert wrong == []


def test_a_bottom_layer_module_loads_no_stage_or_pipeline():
    code = ("import importlib, sys\n"
            f"for name in {BOTTOM!r}: importlib.import_module(name)\n"
            "print(sorted(m for m in sys.modules if m.startswith(('distill.stages', 'distill.pipeline', "
            "'distill.recipe', 'distill.run'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
