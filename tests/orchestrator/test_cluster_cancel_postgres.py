"""A cancel sent to a daemon that does not own the run answers as soon as the owner ended it,
even when the caller's own claim of the run is still in flight (docs/reliability.md, "a cancel
through the other daemon once took 2 s").

The caller (B) delivers the cancel to an actor of its own, which first tries to claim the run;
until that claim answers B counted the run as live here and ignored the owner's announcement
that it ended, so ``cancel`` waited out ``shutdown_grace``. Here B's claim is held until the
owner (A) has ended the run and announced it, which is what load did now and then."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from pathlib import Path
from typing import Any

import storage
from orchestrator.config import Config
from orchestrator.daemon.compose import Orchestrator
from tests.orchestrator import engine_workflows
from tests.pg import fetch

GRACE = 4.0  # what the cancel waited with the defect
POLL = 30.0  # the cluster's fallback poll: out of the way


class SlowClaim:
    """Real storage whose ``ClaimRun`` of ``run_id`` waits until the run ended elsewhere."""

    def __init__(self, inner: storage.Storage, url: str, run_id: str) -> None:
        self.inner = inner
        self.url = url
        self.run_id = run_id
        self.held = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def execute(self, op: Any) -> Any:
        if isinstance(op, storage.ClaimRun) and op.run_id == self.run_id:
            self.held += 1
            for _ in range(200):
                rows = await fetch(self.url, "SELECT status FROM runs WHERE run_id = $1",
                                   self.run_id)
                if rows == [("cancelled",)]:
                    break
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.3)  # and the owner's announcement has reached this daemon
        return await self.inner.execute(op)


def _config(root: Path, url: str) -> Config:
    root.mkdir()
    cfg = Config.default(root)
    return dataclasses.replace(
        cfg, storage=dataclasses.replace(cfg.storage, url=url),
        daemon=dataclasses.replace(cfg.daemon, poll=POLL, lease=60.0, shutdown_grace=GRACE),
    )


async def test_a_cancel_through_the_other_daemon_answers_once_the_owner_ended_the_run(
    tmp_path: Path, pg_url: str
) -> None:
    slow: list[SlowClaim] = []

    def wrap(inner: storage.Storage) -> storage.Storage:
        slow.append(SlowClaim(inner, pg_url, "c"))
        return slow[0]  # type: ignore[return-value]

    registry = engine_workflows.registry()
    async with Orchestrator(_config(tmp_path / "a", pg_url), registry=registry,
                            import_modules=False, configure_logging=False) as a:
        await a.submit("event", {"type": "never"}, run_id="c")
        deadline = time.monotonic() + 10
        while (await a.get("c"))["status"] != "waiting":
            assert time.monotonic() < deadline, "the run never parked on its owner"
            await asyncio.sleep(0.02)
        async with Orchestrator(_config(tmp_path / "b", pg_url), registry=registry,
                                import_modules=False, configure_logging=False,
                                wrap_storage=wrap) as b:
            started = time.monotonic()
            answer = await b.cancel("c", reason="not needed")
            took = time.monotonic() - started
    print(f"cancel through the other daemon answered in {took:.3f} s")
    assert answer["status"] == "cancelled", answer
    assert slow[0].held == 1, "the caller never tried to claim the run: nothing was tested"
    assert took < GRACE / 2, f"the cancel answered after {took:.2f} s"
