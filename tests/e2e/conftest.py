"""A real ``wf daemon`` subprocess per test, with its own config, socket, database and log.

``daemon`` is started with the default e2e config; ``make_daemon(**overrides)`` starts one with
config overrides (``make_daemon(daemon={"max_request_bytes": 4096})``) or, with ``start=False``,
only prepares it. On teardown every daemon still running gets SIGTERM and must exit 0 within
15 s with ``daemon.stopped`` in its log.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest

from orchestrator.client import Client

E2E_DIR = Path(__file__).resolve().parent
READY_TIMEOUT = 15.0
STOP_TIMEOUT = 15.0

TERMINAL = frozenset(
    {"completed", "failed", "cancelled", "compensated", "compensation_failed", "timed_out"}
)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str | Path):
        return orjson.dumps(str(value)).decode()
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot render {value!r} as TOML")


def render_toml(sections: dict[str, dict[str, Any]]) -> str:
    lines: list[str] = []
    for name, values in sections.items():
        lines.append(f"[{name}]")
        lines.extend(f"{key} = {_toml_value(v)}" for key, v in values.items())
        lines.append("")
    return "\n".join(lines)


class Daemon:
    """One daemon's files and process. ``root`` holds config.toml, wf.sock, wf.db, daemon.log."""

    def __init__(self, root: Path, overrides: dict[str, dict[str, Any]] | None = None) -> None:
        self.root = root
        self.socket = root / "wf.sock"
        self.db_path = root / "wf.db"
        self.log_path = root / "daemon.log"
        self.config_path = root / "config.toml"
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0
        self._starts = 0
        self.sections: dict[str, dict[str, Any]] = {
            "daemon": {
                "socket": str(self.socket),
                "event_loop": "asyncio",
                "shutdown_grace": "2s",
            },
            "storage": {"path": str(self.db_path)},
            "workflows": {"paths": [str(E2E_DIR)], "modules": ["e2e_workflows"]},
            "logging": {"level": "debug", "file": str(self.log_path)},
        }
        for section, values in (overrides or {}).items():
            self.sections.setdefault(section, {}).update(values)
        self.write_config()

    def write_config(self) -> None:
        self.config_path.write_text(render_toml(self.sections), encoding="utf-8")

    # --- process life -------------------------------------------------------------------

    def spawn(self, config_path: Path | None = None) -> subprocess.Popen[bytes]:
        """Start ``wf daemon`` without waiting for it (stdout/stderr go to files in root)."""
        self._starts += 1
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        out = (self.root / f"daemon.{self._starts}.stdout").open("wb")
        err = (self.root / f"daemon.{self._starts}.stderr").open("wb")
        with out, err:
            proc = subprocess.Popen(
                [sys.executable, "-m", "orchestrator", "daemon",
                 "--config", str(config_path or self.config_path)],
                stdout=out,
                stderr=err,
                cwd=self.root,
            )
        return proc

    def stderr_of_last_start(self) -> str:
        return (self.root / f"daemon.{self._starts}.stderr").read_text(errors="replace")

    def start(self) -> Daemon:
        self.proc = self.spawn()
        self.wait_ready()
        return self

    def new_log(self) -> str:
        """What the daemon logged since its last start."""
        if not self.log_path.exists():
            return ""
        with self.log_path.open("rb") as f:
            f.seek(self._log_offset)
            return f.read().decode(errors="replace")

    def log_records(self) -> list[dict[str, Any]]:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return [orjson.loads(line) for line in text.splitlines() if line.startswith("{")]

    def wait_ready(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if '"daemon.ready"' in self.new_log():
                return
            if self.proc.poll() is not None:
                pytest.fail(
                    f"daemon exited {self.proc.returncode} before daemon.ready\n"
                    f"log:\n{self.new_log()}\nstderr:\n{self.stderr_of_last_start()}"
                )
            time.sleep(0.02)
        pytest.fail(f"daemon not ready within {READY_TIMEOUT}s\nlog:\n{self.new_log()}")

    def stop(self) -> int:
        """SIGTERM; return the exit code (fails the test if it does not exit in time)."""
        assert self.proc is not None
        proc, self.proc = self.proc, None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            pytest.fail(f"daemon did not exit within {STOP_TIMEOUT}s of SIGTERM")

    def stop_cleanly(self) -> None:
        code = self.stop()
        log = self.new_log()
        assert code == 0, f"daemon exited {code}\nlog tail:\n{log[-3000:]}"
        assert '"daemon.stopped"' in log

    def kill(self) -> None:
        """SIGKILL: no cleanup at all (the socket file stays behind)."""
        assert self.proc is not None
        proc, self.proc = self.proc, None
        proc.kill()
        proc.wait()

    def restart(self) -> Daemon:
        """Stop (cleanly, if running) and start again on the same files."""
        if self.proc is not None:
            self.stop_cleanly()
        return self.start()

    # --- talking to it ------------------------------------------------------------------

    def client(self) -> contextlib.AbstractAsyncContextManager[Client]:
        return Client.connect(self.socket)

    def cli(
        self, *args: str, input: str | None = None, timeout: float = 30
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "orchestrator", "--socket", str(self.socket), *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.root,
        )

    def cli_popen(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-u", "-m", "orchestrator", "--socket", str(self.socket), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=self.root,
        )


@pytest.fixture
def make_daemon(tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    started: list[Daemon] = []
    count = 0

    def make(start: bool = True, root: Path | None = None, **overrides: dict[str, Any]) -> Daemon:
        nonlocal count
        count += 1
        if root is None:
            root = tmp_path if count == 1 else tmp_path / f"d{count}"
        root.mkdir(exist_ok=True)
        d = Daemon(root, overrides)
        started.append(d)
        if start:
            d.start()
        return d

    yield make
    stop_all(started)


def stop_all(daemons: Sequence[Daemon]) -> None:
    """SIGTERM every daemon still running; each must exit 0. Reports all, not the first."""
    failures = []
    for d in daemons:
        if d.proc is not None:
            try:
                d.stop_cleanly()
            except AssertionError as exc:
                failures.append(str(exc))
    assert not failures, "\n".join(failures)


@pytest.fixture
def daemon(make_daemon: Callable[..., Daemon]) -> Daemon:
    return make_daemon()


@pytest.fixture(scope="module")
def shared_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """One daemon for a whole module, for tests that leave no state the others could see."""
    d = Daemon(tmp_path_factory.mktemp("shared")).start()
    yield d
    d.stop_cleanly()


@pytest.fixture
async def client(daemon: Daemon) -> AsyncIterator[Client]:
    async with daemon.client() as c:
        yield c


# --- helpers shared by the test modules -------------------------------------------------------


async def wait_until(
    predicate: Callable[[], Any], *, timeout: float = 10.0, what: str = "condition"
) -> Any:
    """Poll ``predicate`` (sync or async) until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def wait_status(client: Client, run_id: str, *statuses: str, timeout: float = 10.0) -> Any:
    async def check() -> Any:
        run = await client.get(run_id)
        return run if run["status"] in statuses else None

    return await wait_until(check, timeout=timeout, what=f"{run_id} in {statuses}")


async def start_stream(
    client: Client, iterator: Any
) -> tuple[asyncio.Task[Any], asyncio.Queue[Any]]:
    """Start consuming a streaming call into a queue, returning once its request was written,
    so requests sent afterwards on the same connection reach the daemon after it."""
    queue: asyncio.Queue[Any] = asyncio.Queue()
    before = len(client._streams)

    async def pump() -> None:
        async for item in iterator:
            await queue.put(item)
        await queue.put(None)

    task = asyncio.create_task(pump())
    await wait_until(lambda: len(client._streams) > before, what="stream request sent")
    return task, queue


async def next_item(queue: asyncio.Queue[Any], timeout: float = 10.0) -> Any:
    return await asyncio.wait_for(queue.get(), timeout)


async def stop_task(task: asyncio.Task[Any]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def wait_file(path: Path, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.01)

