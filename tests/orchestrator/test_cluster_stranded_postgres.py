"""A claim that committed while its caller saw the connection fail (SPEC §13): the runs it gave
this daemon are not left owned and undriven. Before the fix they stayed ``pending`` until the
daemon stopped, since no other daemon may claim a run that has an owner.

The storage is real PostgreSQL; the wrapper lets the claim commit and then raises, as a writer
session killed between COMMIT and its reply does."""

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


class LostReply:
    """Real storage whose first ``ClaimRuns`` that claims something commits, then raises."""

    def __init__(self, inner: storage.Storage) -> None:
        self.inner = inner
        self.lost: list[str] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def execute(self, op: Any) -> Any:
        result = await self.inner.execute(op)
        if isinstance(op, storage.ClaimRuns) and result and not self.lost:
            self.lost = [c.run.run_id for c in result]
            raise ConnectionError("connection lost after COMMIT (test)")
        return result


def _config(root: Path, url: str) -> Config:
    cfg = Config.default(root)
    return dataclasses.replace(
        cfg, storage=dataclasses.replace(cfg.storage, url=url),
        daemon=dataclasses.replace(cfg.daemon, poll=0.05),
    )


async def test_runs_of_a_claim_whose_reply_was_lost_are_taken_over(
    tmp_path: Path, pg_url: str
) -> None:
    wrapper: list[LostReply] = []

    def wrap(inner: storage.Storage) -> storage.Storage:
        wrapper.append(LostReply(inner))
        return wrapper[0]  # type: ignore[return-value]

    cfg = _config(tmp_path, pg_url)
    async with Orchestrator(cfg, registry=engine_workflows.registry(), import_modules=False,
                            configure_logging=False, wrap_storage=wrap) as orch:
        daemon_id = orch.engine.lease.daemon_id  # type: ignore[union-attr]
        # Runs nobody owns (as a client of another daemon would leave them): the tick claims.
        async with storage.PostgresStorage.open(pg_url, exclusive=False) as other:
            for n in range(3):
                await other.create_run(storage.CreateRun(
                    run_id=f"s{n}", workflow_id="echo", created_at=time.time(), input=n))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            done = await fetch(pg_url, "SELECT count(*) FROM runs WHERE run_id LIKE 's%' "
                                       "AND status = 'completed'")
            if done == [(3,)]:
                break
            await asyncio.sleep(0.05)
        assert wrapper[0].lost, "the claim never ran"
        rows = await fetch(pg_url, "SELECT run_id, status, owner FROM runs "
                                   "WHERE run_id LIKE 's%' ORDER BY run_id")
        assert rows == [(f"s{n}", "completed", None) for n in range(3)], rows
        assert orch.engine.cluster is not None and orch.engine.cluster.adopted >= len(
            wrapper[0].lost)
        assert await orch.storage.owned_runs(daemon_id) == []
