"""A real ``wf daemon`` subprocess for tests: start, wait for ``daemon.ready``, kill -9, stop."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.harness import launcher_path

READY_TIMEOUT = 20.0


class DaemonProcess:
    def __init__(self, workdir: Path, *, modules: list[str], paths: list[Path],
                 extra: str = "", env: dict[str, str] | None = None) -> None:
        self.workdir = workdir
        self.env = env or {}  # for every incarnation (e.g. a mutant switch)
        self.socket = workdir / "wf.sock"
        self.db = workdir / "wf.db"
        self.log_path = workdir / "daemon.log"
        self.config_path = workdir / "config.toml"
        self.incarnation = 0
        self.proc: subprocess.Popen[bytes] | None = None
        paths_toml = ", ".join(json.dumps(str(p)) for p in paths)
        modules_toml = ", ".join(json.dumps(m) for m in modules)
        self.config_path.write_text(
            f"[daemon]\nsocket = {json.dumps(str(self.socket))}\nevent_loop = \"asyncio\"\n"
            f"shutdown_grace = \"2s\"\n{extra}\n"
            f"[storage]\npath = {json.dumps(str(self.db))}\n"
            f"[workflows]\npaths = [{paths_toml}]\nmodules = [{modules_toml}]\n"
            f"[logging]\nlevel = \"debug\"\nfile = {json.dumps(str(self.log_path))}\n"
        )

    def start(self, env: dict[str, str] | None = None) -> None:
        """Start and wait for ``daemon.ready``; RuntimeError if it exits before that."""
        self.incarnation += 1
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        env = {**os.environ, "WF_TEST_INCARNATION": str(self.incarnation), **self.env,
               **(env or {}), "PYTHONPATH": launcher_path()}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.harness.launch", "daemon",
             "--config", str(self.config_path)],
            cwd=self.workdir, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                raise RuntimeError(f"daemon exited {self.proc.returncode}: {err}\n{self.tail()}")
            if self.log_path.exists():
                with self.log_path.open("rb") as fh:
                    fh.seek(offset)
                    if b'"daemon.ready"' in fh.read():
                        return
            time.sleep(0.02)
        raise RuntimeError(f"daemon not ready in {READY_TIMEOUT}s\n{self.tail()}")

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> int:
        """SIGTERM and wait; returns the exit code."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise

    def events(self) -> list[dict[str, Any]]:
        if not self.log_path.exists():
            return []
        out = []
        for line in self.log_path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out

    def tail(self, n: int = 30) -> str:
        if not self.log_path.exists():
            return "(no log)"
        return "\n".join(self.log_path.read_text().splitlines()[-n:])
