from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

CHILD = Path(__file__).with_name("crash_writer.py")


@pytest.mark.slow
def test_every_acknowledged_write_survives_kill_9(tmp_path: Path) -> None:
    """A writer killed mid-stream loses nothing it acknowledged (group commit, WAL, FULL)."""
    path = tmp_path / "wf.db"
    proc = subprocess.Popen([sys.executable, str(CHILD), str(path), "50"],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    acked: list[tuple[str, str]] = []
    try:
        for line in proc.stdout:
            run_id, step_id = line.split()
            acked.append((run_id, step_id))
            if len(acked) >= 3000:
                break
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert len(acked) >= 3000, "child died before acknowledging enough writes"
    conn = sqlite3.connect(path)
    stored = set(conn.execute(
        "SELECT r.run_id, s.step_id FROM steps s JOIN runs r ON r.number = s.run_no"
    ).fetchall())
    conn.close()
    missing = [a for a in acked if a not in stored]
    assert not missing, f"{len(missing)} acknowledged writes lost, e.g. {missing[:3]}"
