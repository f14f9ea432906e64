"""Many clients at once against one daemon."""

from __future__ import annotations

import asyncio
import resource

import pytest

from orchestrator.client import Client
from tests.e2e.conftest import Daemon

pytestmark = pytest.mark.slow

CLIENTS = 1000


@pytest.fixture
def enough_fds() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = CLIENTS * 2 + 256
    if soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < {needed}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


async def _submit_and_wait_all(daemon: Daemon, clients: list[Client]) -> None:
    runs = await asyncio.gather(
        *(c.submit("e2e-echo", {"i": i}, run_id=f"load-{i}") for i, c in enumerate(clients))
    )
    assert sorted(r["run_id"] for r in runs) == sorted(f"load-{i}" for i in range(CLIENTS))
    done = await asyncio.wait_for(
        asyncio.gather(*(c.wait(f"load-{i}", timeout=30) for i, c in enumerate(clients))), 60
    )
    assert [d["status"] for d in done] == ["completed"] * CLIENTS
    assert [d["output"] for d in done] == [{"echo": {"i": i}} for i in range(CLIENTS)]
    async with daemon.client() as c:
        assert (await c.stats())["runs"] == {"completed": CLIENTS}


async def test_a_thousand_open_connections_each_submit_a_run_at_once(
    enough_fds: None, daemon: Daemon
) -> None:
    """1000 connections open together, then every one submits at once: every submission is
    acknowledged and every run completes. The connections are opened in waves of 50, each
    confirmed by a round trip (the burst case is the next test)."""
    clients: list[Client] = []
    try:
        for _ in range(CLIENTS // 50):
            wave = await asyncio.gather(*(Client.open(daemon.socket) for _ in range(50)))
            clients += wave
            await asyncio.gather(*(c.workflows() for c in wave))
        await _submit_and_wait_all(daemon, clients)
    finally:
        await asyncio.gather(*(c.close() for c in clients))


async def test_a_thousand_simultaneous_connects_each_submit_a_run(
    enough_fds: None, daemon: Daemon
) -> None:
    clients: list[Client] = []
    try:
        clients += await asyncio.gather(*(Client.open(daemon.socket) for _ in range(CLIENTS)))
        await _submit_and_wait_all(daemon, clients)
    finally:
        await asyncio.gather(*(c.close() for c in clients))
