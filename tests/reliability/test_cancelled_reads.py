"""Reads cancelled half-way (a client gone with a request in flight) must not break the read
pool of the embedded engine: later ``stats``/``get`` work and see fresh data."""

from __future__ import annotations

import asyncio
from pathlib import Path

from orchestrator import Orchestrator
from tests.reliability.conftest import embedded_config


async def test_cancelled_snapshot_reads_leave_the_read_pool_usable(tmp_path: Path) -> None:
    async with Orchestrator(embedded_config(tmp_path), import_modules=False) as orch:
        await orch.submit("rel-echo", 1, run_id="a")
        await orch.wait("a", timeout=5)
        for round_ in range(20):
            tasks = [asyncio.create_task(orch.stats()) for _ in range(4)]
            tasks += [asyncio.create_task(orch.get("a")) for _ in range(4)]
            for _ in range(round_ % 5):
                await asyncio.sleep(0)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        await orch.submit("rel-echo", 2, run_id="b")
        assert (await orch.wait("b", timeout=5))["status"] == "completed"
        for _ in range(4):  # every pooled read connection gets used
            assert (await orch.stats())["runs"] == {"completed": 2}
            assert (await orch.get("b"))["status"] == "completed"
            assert {r["run_id"] for r in (await orch.list())["runs"]} == {"a", "b"}
