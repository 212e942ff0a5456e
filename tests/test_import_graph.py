"""The import graph of the application: no cycle, and no import hidden in a function.

import-linter (`make lint`) checks the direction of imports between layers; this proves
the stronger property that no module of the app imports itself back through others,
which is what lets every import sit at the top of its module. An import inside a
function is allowed only for a heavy library loaded lazily, and each one is listed here.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The application: everything a web, worker or beat process imports (not tests, scripts,
# benchmarks or migrations, which stand outside it).
APP_TOP_LEVEL = (
    *("app.py", "celeryconfig.py", "cli.py", "cli_audit.py", "cli_jobs.py", "config.py"),
    *("extensions.py", "logs.py", "make_celery.py", "gunicorn.conf.py", "redis_urls.py"),
    "pg_timeouts.py",
)
APP_PACKAGES = ("blueprints", "services", "tasks", "models", "integrations")
# (module, imported module): heavy libraries that only a few code paths need.
LAZY_IMPORTS = {
    ("services.identity.passwords", "zxcvbn.frequency_lists"),
    ("services.insights.report_figures", "matplotlib.figure"),
    ("services.insights.report_figures", "matplotlib.ticker"),
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def app_modules() -> dict[str, Path]:
    files = [ROOT / name for name in APP_TOP_LEVEL]
    for package in APP_PACKAGES:
        files += sorted((ROOT / package).rglob("*.py"))
    return {module_name(f): f for f in files}


def imports_of(module: str, path: Path) -> Iterator[tuple[str, bool]]:
    """(imported name, whether the import is inside a function) for every import; for
    `from a.b import c` both `a.b` and `a.b.c` (c may be a module)."""
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    nested: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            nested.update(id(n) for n in ast.walk(node) if n is not node)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, id(node) in nested
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            yield base, id(node) in nested
            for alias in node.names:  # `from services.jobs import names` imports a module
                yield f"{base}.{alias.name}", id(node) in nested


def graph() -> dict[str, set[str]]:
    modules = app_modules()
    edges: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in modules.items():
        for target, _ in imports_of(module, path):
            if target in modules and target != module:
                edges[module].add(target)
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in edges[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_app_has_no_import_cycle() -> None:
    edges = graph()
    assert len(edges) > 150  # the whole app was read, not an empty folder
    assert cycles(edges) == []


def test_imports_inside_functions_are_only_lazy_heavy_libraries() -> None:
    inside = set()
    for module, path in app_modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for inner in ast.walk(node):
                    if isinstance(inner, ast.ImportFrom):
                        inside.add((module, inner.module))
                    elif isinstance(inner, ast.Import):
                        inside.update((module, alias.name) for alias in inner.names)
    assert inside == LAZY_IMPORTS
