"""The import graph: what the client loads, and that no module of ``orchestrator/`` or
``runtime/`` imports itself back through others."""

from __future__ import annotations

import ast
import contextlib
import gc
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_importing_the_client_loads_no_database_driver_executor_or_engine() -> None:
    """``wf`` and the socket client run without SQLite, the executor or the engine behind them."""
    code = (
        "import sys, orchestrator.client, orchestrator.client.cli\n"
        "names = ('aiosqlite', 'sqlite3', '_sqlite3', 'runtime.executor', 'storage.sqlite',\n"
        "         'orchestrator.engine', 'orchestrator.daemon')\n"
        "print(','.join(m for m in names if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert out.stdout.strip() == ""


def test_the_engine_and_daemon_load_no_opentelemetry_unless_traces_are_on() -> None:
    """The ``otel`` extra is optional: composing a daemon without ``[telemetry]`` imports none of
    it (and so works where it is not installed)."""
    code = (
        "import sys, orchestrator, orchestrator.daemon.daemon, orchestrator.engine.engine\n"
        "import orchestrator.client.cli\n"
        "print(','.join(m for m in sys.modules if m.startswith('opentelemetry')\n"
        "               or m == 'orchestrator.engine.otel'))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert out.stdout.strip() == ""
@contextlib.contextmanager
def no_gc() -> Iterator[None]:
    """CPython 3.11.7 raises "AST constructor recursion depth mismatch" when a collection runs
    finalizers in the middle of ``ast.parse`` building its tree (seen after the runtime tests
    left suspended coroutines behind): keep the collector out while it parses."""
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


# --- cycles ---------------------------------------------------------------------------------------


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(source: str, name: str, modules: set[str], *, is_package: bool = False) -> set[str]:
    """Every module of ``modules`` that module ``name`` imports, wherever the import statement
    is (module level, inside a function, under ``if TYPE_CHECKING:``). ``from pkg import x``
    counts as importing ``pkg.x`` when that is a module, else ``pkg``."""
    package = name if is_package else name.rpartition(".")[0]
    found: set[str] = set()
    with no_gc():
        tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                child = f"{base}.{alias.name}"
                found.add(child if child in modules else base)
    return {m for m in found if m in modules and m != name}


def import_graph(*packages: str) -> dict[str, set[str]]:
    paths = [p for pkg in packages for p in sorted((ROOT / pkg).rglob("*.py"))]
    modules = {module_name(p) for p in paths}
    return {
        module_name(p): imports_of(p.read_text(encoding="utf-8"), module_name(p), modules,
                                   is_package=p.name == "__init__.py")
        for p in paths
    }


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The modules of each import cycle: the strongly connected components of more than one
    module (Tarjan), sorted for a stable message."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
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

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def test_cycle_finder_finds_a_cycle_and_nothing_else() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert cycles(graph) == [["a", "b", "c"]]


def test_imports_inside_functions_and_under_type_checking_count() -> None:
    source = (
        "from typing import TYPE_CHECKING\n"
        "from . import sibling\n"
        "from pkg.sub import Thing\n"
        "if TYPE_CHECKING:\n"
        "    from pkg.typed import T\n"
        "def f():\n"
        "    import pkg.lazy\n"
    )
    modules = {"pkg", "pkg.me", "pkg.sibling", "pkg.sub", "pkg.typed", "pkg.lazy", "pkg.unused"}
    assert imports_of(source, "pkg.me", modules) == {
        "pkg.sibling", "pkg.sub", "pkg.typed", "pkg.lazy"
    }


def test_no_import_cycle_runs_through_an_orchestrator_module() -> None:
    found = cycles(import_graph("orchestrator", "runtime"))
    assert [c for c in found if any(m.startswith("orchestrator") for m in c)] == []


def test_no_import_cycle_among_orchestrator_and_runtime_modules() -> None:
    assert cycles(import_graph("orchestrator", "runtime")) == []


def test_the_http_wing_reaches_the_engine_only_through_the_api() -> None:
    """``orchestrator/http`` imports api/ (and config), never engine/, daemon/ or storage."""
    graph = import_graph("orchestrator", "runtime", "storage")
    for module, imported in graph.items():
        if module.startswith("orchestrator.http"):
            bad = {m for m in imported if m.startswith(
                ("orchestrator.engine", "orchestrator.daemon", "orchestrator.client", "storage"))}
            assert not bad, f"{module} imports {sorted(bad)}"
