"""A cancel sent to a daemon that does not own the run answers as soon as the owner ended it
(docs/reliability.md, "a cancel through the other daemon once took 2 s").

The caller (B) commits the cancel, then hands it to an actor of its own, which first tries to
claim the run and stands down when another daemon owns it. While that claim was in flight B
counted the run as live here ("its end will be announced through this daemon"), so ``cancel``
(which waits for the end) skipped its read, and skipped the owner's announcement too: it
answered only when ``shutdown_grace`` ran out. Load made either order happen now and then:
- the owner's announcement came before B listened for it (B's loop was slow to resume the
  cancel after its commit): held here by making B's ``RequestCancel`` return only once the
  owner (A) has ended the run;
- it came while B's claim was in flight: held here by making B's ``ClaimRun`` wait the same."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from pathlib import Path
from typing import Any

import pytest

import storage
from orchestrator.config import Config
from orchestrator.daemon.compose import Orchestrator
from tests.orchestrator import engine_workflows
from tests.pg import fetch

GRACE = 4.0  # what the cancel waited with the defect
POLL = 30.0  # the cluster's fallback poll: out of the way


class Held:
    """Real storage whose ``held`` op on ``run_id`` returns only once the run is cancelled (by
    its owner, another daemon) and that daemon's announcement has reached this one."""

    def __init__(self, inner: storage.Storage, url: str, run_id: str, held: type) -> None:
        self.inner = inner
        self.url = url
        self.run_id = run_id
        self.held = held
        self.holds = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def execute(self, op: Any) -> Any:
        if not (isinstance(op, self.held) and op.run_id == self.run_id):
            return await self.inner.execute(op)
        self.holds += 1
        # A claim is held before it runs (the owner cancels meanwhile); the cancel request
        # must commit first (it is what the owner acts on), then its caller is held.
        result = None if self.held is storage.ClaimRun else await self.inner.execute(op)
        for _ in range(200):
            rows = await fetch(self.url, "SELECT status FROM runs WHERE run_id = $1", self.run_id)
            if rows == [("cancelled",)]:
                break
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.3)  # and the owner's announcement has reached this daemon
        return await self.inner.execute(op) if self.held is storage.ClaimRun else result


def _config(root: Path, url: str) -> Config:
    root.mkdir()
    cfg = Config.default(root)
    return dataclasses.replace(
        cfg, storage=dataclasses.replace(cfg.storage, url=url),
        daemon=dataclasses.replace(cfg.daemon, poll=POLL, lease=60.0, shutdown_grace=GRACE),
    )


@pytest.mark.parametrize("held", [storage.RequestCancel, storage.ClaimRun],
                         ids=["announced-before-listening", "announced-while-claiming"])
async def test_a_cancel_through_the_other_daemon_answers_once_the_owner_ended_the_run(
    tmp_path: Path, pg_url: str, held: type
) -> None:
    slow: list[Held] = []

    def wrap(inner: storage.Storage) -> storage.Storage:
        slow.append(Held(inner, pg_url, "c", held))
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
    assert slow[0].holds == 1, f"the caller never ran {held.__name__}: nothing was tested"
    assert took < GRACE / 2, f"the cancel answered after {took:.2f} s"
