"""The shape of the product code, read from the source with `ast`: imports flow one way (no
cycle among the modules of `trainer`, `app` and `worker`, function-level imports included),
and no function is longer than a reader can hold in their head."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("trainer", "app", "worker")
MAX_FUNCTION_LINES = 60


def modules() -> dict[str, Path]:
    """Dotted module name -> source file, for every module of the product packages."""
    out = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def imported(name: str, path: Path, known: set[str]) -> set[str]:
    """The product modules `name` imports anywhere in its file (top level, in functions,
    under TYPE_CHECKING excepted: those are for the type checker, not run)."""
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    type_only = _type_checking_nodes(tree)
    out: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            # `from app import jobs` imports the module app.jobs when there is one.
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                out.add(target)
    return out


def _type_checking_nodes(tree: ast.Module) -> set[int]:
    ids: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                ids.update(id(n) for n in ast.walk(child))
    return ids


def graph() -> dict[str, set[str]]:
    found = modules()
    known = set(found)
    return {name: imported(name, path, known) for name, path in found.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(edges.get(node, ())):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return out


def describe(component: list[str], edges: dict[str, set[str]]) -> str:
    members = set(component)
    links = [f"{a} -> {b}" for a in component for b in sorted(edges[a] & members)]
    return f"cycle among {', '.join(component)}: " + "; ".join(links)


def test_the_graph_sees_function_level_and_relative_imports() -> None:
    # Guards the guard: these edges exist only inside functions or as `from app import x`.
    edges = graph()
    assert "app.settings" in edges["app.cli"]
    assert "trainer.spec" in edges["trainer.cli"]
    assert edges["app.api"] >= {"app.routes.jobs", "app.web"}


def test_cycle_finder_names_a_cycle() -> None:
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(edges) == [["a", "b", "c"]]
    assert describe(["a", "b", "c"], edges) == "cycle among a, b, c: a -> b; b -> c; c -> a"


def test_imports_flow_one_way() -> None:
    edges = graph()
    found = [describe(c, edges) for c in cycles(edges)]
    assert not found, "import cycles:\n" + "\n".join(found)


def long_functions() -> list[str]:
    out = []
    for name, path in modules().items():
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                assert node.end_lineno is not None
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    out.append(f"{name}:{node.lineno} {node.name} ({lines} lines)")
    return out


def test_no_function_in_product_code_is_over_60_lines() -> None:
    found = long_functions()
    assert not found, f"functions over {MAX_FUNCTION_LINES} lines:\n" + "\n".join(found)
