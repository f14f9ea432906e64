from __future__ import annotations

import subprocess
import sys


def test_importing_runtime_pulls_in_no_io_packages() -> None:
    """runtime/ must stay pure: no storage, orchestrator, or SQLite driver behind it."""
    code = (
        "import sys, runtime, runtime.testing\n"
        "names = ('aiosqlite', 'sqlite3', 'storage', 'orchestrator')\n"
        "bad = [m for m in names if m in sys.modules]\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def _runtime_imports() -> dict[str, set[str]]:
    """Which runtime modules each runtime module imports, lazy and TYPE_CHECKING ones included."""
    import ast
    from pathlib import Path

    import runtime

    root = Path(runtime.__file__).parent
    modules = {p.stem for p in root.glob("*.py") if p.stem != "__init__"}
    graph: dict[str, set[str]] = {}
    for name in modules:
        found: set[str] = set()
        for node in ast.walk(ast.parse((root / f"{name}.py").read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == "runtime":
                found |= {a.name for a in node.names if a.name in modules}
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("runtime."):
                found.add(node.module.split(".")[1])  # type: ignore[union-attr]
            elif isinstance(node, ast.Import):
                found |= {a.name.split(".")[1] for a in node.names
                          if a.name.startswith("runtime.")}
        graph[name] = found - {name}
    return graph


def test_runtime_modules_import_each_other_without_a_circle() -> None:
    """The ctx modules share run state through runtime._state, never through the executor."""
    graph = _runtime_imports()
    done: set[str] = set()

    def visit(name: str, path: list[str]) -> None:
        if name in path:
            raise AssertionError("import circle: " + " -> ".join([*path[path.index(name):], name]))
        if name in done:
            return
        for dep in sorted(graph.get(name, ())):
            visit(dep, [*path, name])
        done.add(name)

    for name in sorted(graph):
        visit(name, [])
    assert "executor" not in set().union(*(graph[m] for m in
                                           ("context", "steps", "streams", "waitables")))
