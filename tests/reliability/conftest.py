"""Fixtures for the reliability tests: an embedded engine on a real SQLite file, and real
daemons loading ``rel_workflows`` (optionally with a low file-descriptor limit)."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import tests.reliability.rel_workflows  # noqa: F401  (registers the rel- workflows in-process)
from orchestrator.config import Config
from tests.e2e.conftest import Daemon, stop_all
from tests.harness import launcher_path
from tests.reliability.powercut.harness import shim  # noqa: F401  (session fixture: the LD_PRELOAD shim)

REL_DIR = Path(__file__).resolve().parent

TERMINAL = frozenset(
    {"completed", "failed", "cancelled", "compensated", "compensation_failed", "timed_out"}
)


def embedded_config(root: Path, **daemon: Any) -> Config:
    """The default config with the database in ``root`` (no workflow modules imported: the
    ``rel-`` workflows are registered by importing ``rel_workflows`` above)."""
    cfg = Config.default(root)
    return dataclasses.replace(
        cfg,
        daemon=dataclasses.replace(cfg.daemon, socket=root / "wf.sock", shutdown_grace=2.0,
                                   **daemon),
        storage=dataclasses.replace(cfg.storage, path=root / "wf.db"),
    )


class RelDaemon(Daemon):
    """A ``wf daemon`` loading ``rel_workflows``; ``nofile`` caps its RLIMIT_NOFILE."""

    def __init__(self, root: Path, overrides: dict[str, dict[str, Any]] | None = None,
                 nofile: int | None = None) -> None:
        merged: dict[str, dict[str, Any]] = {
            "workflows": {"paths": [str(REL_DIR)], "modules": ["rel_workflows"]},
            "logging": {"level": "info", "file": str(root / "daemon.log")},
        }
        for section, values in (overrides or {}).items():
            merged.setdefault(section, {}).update(values)
        super().__init__(root, merged)
        self.nofile = nofile

    def spawn(self, config_path: Path | None = None) -> subprocess.Popen[bytes]:
        self._starts += 1
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        nofile = self.nofile

        def limit_fds() -> None:
            if nofile is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

        out = (self.root / f"daemon.{self._starts}.stdout").open("wb")
        err = (self.root / f"daemon.{self._starts}.stderr").open("wb")
        with out, err:
            return subprocess.Popen(
                [sys.executable, "-m", "tests.harness.launch", "daemon",
                 "--config", str(config_path or self.config_path)],
                stdout=out, stderr=err, cwd=self.root, preexec_fn=limit_fds,
                env={**os.environ, "PYTHONPATH": launcher_path()},
            )

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def fd_count(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@pytest.fixture
def make_rel_daemon(tmp_path: Path) -> Iterator[Callable[..., RelDaemon]]:
    made: list[RelDaemon] = []

    def make(start: bool = True, nofile: int | None = None, name: str | None = None,
             **overrides: dict[str, Any]) -> RelDaemon:
        root = tmp_path / (name or f"d{len(made)}")
        root.mkdir()
        d = RelDaemon(root, overrides, nofile=nofile)
        made.append(d)
        if start:
            d.start()
        return d

    yield make
    stop_all(made)


async def wait_until(predicate: Callable[[], Any], *, timeout: float = 10.0,
                     what: str = "condition", interval: float = 0.02) -> Any:
    """Poll ``predicate`` (sync or async) until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)


def wait_fds_back(d: RelDaemon, baseline: int, *, slack: int = 2, timeout: float = 5.0) -> int:
    """Wait until the daemon's fd count is within ``baseline ± slack``; return the count."""
    deadline = time.monotonic() + timeout
    count = d.fd_count()
    while abs(count - baseline) > slack:
        if time.monotonic() > deadline:
            raise AssertionError(
                f"daemon fd count {count} not back to baseline {baseline}±{slack} in {timeout}s"
            )
        time.sleep(0.05)
        count = d.fd_count()
    return count
