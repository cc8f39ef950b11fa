"""engine/'s packages import each other without cycles (TYPE_CHECKING imports aside).

Nodes are engine's sub-packages (engine.pipeline, engine.runtime, ...) and its top-level
modules (engine.api, engine.service, ...); an edge is any import between two of them,
function-level imports included.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ENGINE_DIR = Path(__file__).resolve().parents[2] / "engine"


def node_of(module: str) -> str | None:
    """The graph node a dotted module name belongs to; None outside engine."""
    parts = module.split(".")
    if parts[0] != "engine":
        return None
    return "engine" if len(parts) == 1 else f"engine.{parts[1]}"


def module_name(path: Path) -> str:
    parts = path.relative_to(ENGINE_DIR.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def type_checking_nodes(tree: ast.Module) -> set[int]:
    """ids of every AST node under an `if TYPE_CHECKING:` block."""
    skipped = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(child) for stmt in node.body for child in ast.walk(stmt))
    return skipped


def imported_names(node: ast.AST, package: str) -> list[str]:
    """The dotted modules an import statement may load (from X import y: X and X.y)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if not isinstance(node, ast.ImportFrom):
        return []
    if node.level:
        base = package.split(".")[: len(package.split(".")) - node.level + 1]
        module = ".".join(base + ([node.module] if node.module else []))
    else:
        module = node.module or ""
    return [module] + [f"{module}.{alias.name}" for alias in node.names]


def import_graph() -> dict[str, dict[str, list[str]]]:
    """{node: {imported node: ["file:line", ...]}} over every .py file under engine/."""
    graph: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for path in sorted(ENGINE_DIR.rglob("*.py")):
        module = module_name(path)
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        source = node_of(module)
        tree = ast.parse(path.read_text(encoding="utf-8"))
        skipped = type_checking_nodes(tree)
        for node in ast.walk(tree):
            if id(node) in skipped:
                continue
            for name in imported_names(node, package):
                target = node_of(name)
                if name == "engine" or target in (None, source):
                    continue  # "from engine import x" counts through engine.x
                where = f"{path.relative_to(ENGINE_DIR.parent)}:{node.lineno}"
                graph[source][target].append(where)
    return graph


def find_cycle(edges: dict[str, object]) -> list[str] | None:
    """One cycle of a directed graph as [a, b, ..., a], or None (depth-first search)."""
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        stack.append(node)
        for target in sorted(edges.get(node, ())):
            if state.get(target) == "open":
                return stack[stack.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(edges):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_find_cycle_reports_a_cycle_and_accepts_a_dag():
    assert find_cycle({"a": ["b"], "b": ["c"], "c": ["a"], "d": ["a"]}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": ["b", "c"], "b": ["c"], "c": []}) is None


def test_the_graph_sees_module_and_function_level_imports():
    graph = import_graph()
    assert "engine.diffusion" in graph["engine.pipeline"]  # generator.py, module level
    assert "engine.pipeline" in graph["engine.service"]  # load_generator, function level
    assert {"engine.runtime", "engine.distill", "engine.embedded", "engine.eval",
            "engine.bench"} <= set(graph["engine.cli"])


def test_the_diffusion_math_imports_neither_pipeline_nor_runtime():
    assert set(import_graph()["engine.diffusion"]) <= {"engine.api"}


def test_engine_packages_import_each_other_without_cycles():
    graph = import_graph()
    cycle = find_cycle(graph)
    if cycle:
        steps = zip(cycle, cycle[1:], strict=False)
        evidence = [f"{a} -> {b} ({graph[a][b][0]})" for a, b in steps]
        raise AssertionError("import cycle: " + "; ".join(evidence))
