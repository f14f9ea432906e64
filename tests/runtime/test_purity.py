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
