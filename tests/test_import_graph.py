"""The package has no import cycles: the graph of `src/fin3r` built from the source with `ast`,
module-level and function-level imports alike."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def _modules(root: Path) -> dict[str, tuple[Path, bool]]:
    """Dotted module name -> (file, is_package)."""
    out = {}
    for path in sorted((root / "fin3r").rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts = parts[:-1]
        out[".".join(parts)] = (path, is_package)
    return out


def _resolve(module: str, is_package: bool, level: int, name: str | None) -> str:
    """The absolute module a relative ``from ...name import`` in ``module`` refers to."""
    base = module.split(".") if is_package else module.split(".")[:-1]
    if level > 1:
        base = base[: len(base) - (level - 1)]
    return ".".join(base + ([name] if name else []))


def import_graph(root: Path = SRC) -> dict[str, set[str]]:
    """Module -> the fin3r modules it imports anywhere in its source (``import a.b``, ``from a import
    b`` where ``b`` is a submodule or a name of ``a``, relative imports resolved)."""
    modules = _modules(root)

    def owner(name: str) -> str | None:  # the longest known module prefix of a dotted name
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for module, (path, is_package) in modules.items():
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] == "fin3r" and (dep := owner(alias.name)):
                        deps.add(dep)
            elif isinstance(node, ast.ImportFrom):
                target = _resolve(module, is_package, node.level, node.module) if node.level else node.module
                if not target or target.split(".")[0] != "fin3r":
                    continue
                for alias in node.names:
                    sub = f"{target}.{alias.name}"
                    if sub in modules:
                        deps.add(sub)
                    elif dep := owner(target):
                        deps.add(dep)
        deps.discard(module)
        graph[module] = deps
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (iterative Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    cycles: list[list[str]] = []
    counter = 0
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in graph:
                    continue
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    cycles.append(sorted(component))
    return cycles


def test_the_graph_sees_function_level_and_relative_imports(tmp_path):
    pkg = tmp_path / "fin3r"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from fin3r.sub import b\n")
    (pkg / "sub" / "b.py").write_text("from ..c import thing\n")
    (pkg / "c.py").write_text("import fin3r.a\nthing = 1\n")
    graph = import_graph(tmp_path)
    assert graph["fin3r.a"] == {"fin3r.sub.b"} and graph["fin3r.sub.b"] == {"fin3r.c"}
    assert graph["fin3r.c"] == {"fin3r.a"}
    assert find_cycles(graph) == [["fin3r.a", "fin3r.c", "fin3r.sub.b"]]


def test_fin3r_has_no_import_cycles():
    graph = import_graph()
    assert "fin3r.models.registry" in graph and len(graph) > 50
    cycles = find_cycles(graph)
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)
