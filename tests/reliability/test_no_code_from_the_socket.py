"""Issue 10 item 7: nothing that arrives on the socket is unpickled, imported or evaluated.

A static scan of every engine module (no deserializer that can build objects or run code, no
``eval``/``exec``/``compile``/``__import__``, ``importlib`` only where the config names the
modules), the scan's own mutant (it must flag a module that does), and the daemon's answer to a
request naming a module: the workflow is unknown, nothing is imported.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from orchestrator.client import Client, RemoteError
from tests.crash.daemon_process import DaemonProcess
from tests.crash.test_restart import HERE

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("orchestrator", "storage", "runtime")
# Modules that may build arbitrary objects or run code from bytes.
UNSAFE_MODULES = frozenset({"pickle", "cPickle", "_pickle", "marshal", "shelve", "dill",
                            "cloudpickle", "jsonpickle", "yaml"})
UNSAFE_CALLS = frozenset({"eval", "exec", "compile", "__import__"})
# importlib is allowed where the module name comes from the config file or is a constant.
IMPORTLIB_ALLOWED = frozenset({"orchestrator/daemon/loader.py", "orchestrator/client/cli.py",
                               "storage/sqlite/schema.py", "storage/postgres/schema.py",
                               "orchestrator/config.py"})  # config: find_spec of constants


def _only_metadata(node: ast.Import | ast.ImportFrom, module: str) -> bool:
    """``importlib.metadata`` reads installed packages' versions; it imports nothing."""
    if module == "importlib.metadata":
        return True
    return (isinstance(node, ast.ImportFrom) and module == "importlib"
            and all(a.name == "metadata" for a in node.names))


def findings(source: str, name: str) -> list[str]:
    """What in ``source`` could turn bytes into code or objects."""
    found = []
    for node in ast.walk(ast.parse(source, name)):
        if isinstance(node, ast.Import | ast.ImportFrom):
            modules = ([a.name for a in node.names] if isinstance(node, ast.Import)
                       else [node.module or ""])
            for module in modules:
                top = module.split(".")[0]
                if top in UNSAFE_MODULES:
                    found.append(f"{name}:{node.lineno} imports {module}")
                if (top == "importlib" and name not in IMPORTLIB_ALLOWED
                        and not _only_metadata(node, module)):
                    found.append(f"{name}:{node.lineno} imports {module}")
        elif isinstance(node, ast.Call):
            func = node.func
            called = ""
            if isinstance(func, ast.Name):
                called = func.id
            elif (isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name)
                  and func.value.id == "builtins"):  # not re.compile
                called = func.attr
            if called in UNSAFE_CALLS:
                found.append(f"{name}:{node.lineno} calls {called}()")
    return found


def engine_modules() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))


def test_no_engine_module_can_turn_bytes_into_code() -> None:
    modules = engine_modules()
    assert len(modules) > 30  # the scan sees the engine, not an empty tree
    problems = [f for path in modules
                for f in findings(path.read_text(), path.relative_to(ROOT).as_posix())]
    assert problems == []


@pytest.mark.parametrize("snippet", [
    "import pickle\npickle.loads(b'')",
    "from marshal import loads",
    "import yaml",
    "eval(line)",
    "builtins.exec(code)",
    "__import__(name)",
    "import importlib\nimportlib.import_module(params['module'])",
])
def test_the_scan_flags_what_it_forbids(snippet: str) -> None:
    assert findings(snippet, "orchestrator/server.py")


@pytest.mark.slow
async def test_a_request_naming_a_module_imports_nothing(tmp_path: Path) -> None:
    """A module on the daemon's import path, not in its config, leaves a mark if imported."""
    mods = tmp_path / "mods"
    mods.mkdir()
    marker = tmp_path / "imported"
    (mods / "planted.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('imported')\n")
    daemon = DaemonProcess(tmp_path, modules=["tests.crash.crash_workflows"],
                           paths=[HERE.parents[1], mods])
    daemon.start()
    try:
        async with Client.connect(daemon.socket) as client:
            for workflow_id in ("planted", "planted:main", "planted.main",
                                "__import__('planted')", "os"):
                with pytest.raises(RemoteError) as caught:
                    await client.submit(workflow_id, {"module": "planted"})
                assert caught.value.code == "NOT_FOUND", caught.value
            await client.send_event("planted", {"__reduce__": "planted"})
            assert (await client.stats())["runs"] is not None
    finally:
        assert daemon.stop() == 0, daemon.tail()
    assert not marker.exists()
