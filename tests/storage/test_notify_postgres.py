"""Cross-daemon wakeups on PostgreSQL (SPEC §13): after a commit that resolves, cancels or
pauses a run another daemon owns, that owner hears the run id on its channel; status changes
one daemon announces reach every other daemon, not itself; a LISTEN session the server killed
comes back by itself and says so (``None``: look at everything)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

import asyncpg
import pytest

import storage as st
from storage.postgres import notify
from storage.postgres.notify import application_name
from tests import pg


async def _sql(url: str, sql: str, *args: object) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(url)
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


@pytest.fixture
async def runs(pg_url: str) -> AsyncIterator[str]:
    await _sql(pg_url, "INSERT INTO runs (run_id, workflow_id, status, input, created_at, "
                       "updated_at, owner) VALUES ('mine', 'wf', 'waiting', 'null', 1, 1, 'A'), "
                       "('free', 'wf', 'waiting', 'null', 1, 1, NULL)")
    yield pg_url


def _ignore(_changes: Sequence[st.StatusChange]) -> None:
    pass


async def _next(heard: asyncio.Queue[str | None]) -> str | None:
    return await asyncio.wait_for(heard.get(), 5)


async def test_the_owner_hears_of_a_signal_and_its_listener_survives_termination(
    runs: str,
) -> None:
    heard: asyncio.Queue[str | None] = asyncio.Queue()
    async with st.PostgresStorage.open(runs, exclusive=False) as owner, \
            st.PostgresStorage.open(runs, exclusive=False) as other:
        listening = asyncio.create_task(owner.listen_for_runs("A", heard.put_nowait, _ignore))
        try:
            assert await _next(heard) is None  # connected: look at everything once
            await other.execute(st.SendSignal("free", "go", 1, sent_at=2.0))  # nobody's
            await other.execute(st.SendSignal("mine", "go", 1, sent_at=2.0))
            assert await _next(heard) == "mine"
            await other.execute(st.RequestCancel("mine", at=3.0, reason="x"))
            assert await _next(heard) == "mine"

            (pid,) = [r[0] for r in await _sql(
                runs, "SELECT pid FROM pg_stat_activity WHERE application_name = $1",
                application_name("A"))]
            await _sql(runs, "SELECT pg_terminate_backend($1)", pid)
            assert await _next(heard) is None  # reconnected: what was missed is looked for
            await other.execute(st.SendSignal("mine", "go", 2, sent_at=4.0))
            assert await _next(heard) == "mine"
            assert heard.empty()
        finally:
            listening.cancel()
            await asyncio.gather(listening, return_exceptions=True)


async def test_an_exclusive_opener_notifies_nobody(runs: str) -> None:
    """One process on the database (tests, tools): no other daemon to wake."""
    heard: asyncio.Queue[str | None] = asyncio.Queue()
    async with st.PostgresStorage.open(runs, exclusive=False) as owner:
        listening = asyncio.create_task(owner.listen_for_runs("A", heard.put_nowait, _ignore))
        try:
            assert await _next(heard) is None
            async with st.PostgresStorage.open(runs) as tool:
                await tool.execute(st.SendSignal("mine", "go", 1, sent_at=2.0))
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(heard.get(), 0.3)
        finally:
            listening.cancel()
            await asyncio.gather(listening, return_exceptions=True)


async def test_announced_status_changes_reach_the_other_daemons_not_the_sender(
    runs: str,
) -> None:
    woken: asyncio.Queue[str | None] = asyncio.Queue()
    heard: asyncio.Queue[list[st.StatusChange]] = asyncio.Queue()
    heard_a: list[st.StatusChange] = []
    async with st.PostgresStorage.open(runs, exclusive=False) as a, \
            st.PostgresStorage.open(runs, exclusive=False) as b:
        listening = [
            asyncio.create_task(a.listen_for_runs("A", lambda _r: None, heard_a.extend)),
            asyncio.create_task(b.listen_for_runs(
                "B", woken.put_nowait, lambda c: heard.put_nowait(list(c)))),
        ]
        try:
            assert await _next(woken) is None
            await asyncio.sleep(0.1)  # A listens too (its first connection is not awaited)
            # Enough changes for several notifications (each under the payload limit).
            many = [st.StatusChange(f"run-{i:05d}-" + "x" * 40, "running", "wf")
                    for i in range(400)]
            await a.announce_states("A", [*many, st.StatusChange("mine", "completed", None)])
            got: list[st.StatusChange] = []
            while len(got) < len(many) + 1:
                got.extend(await asyncio.wait_for(heard.get(), 5))
            assert got == [*many, st.StatusChange("mine", "completed", None)]  # in order
            await asyncio.sleep(0.2)
            assert heard_a == []  # the sender does not hear itself
        finally:
            for task in listening:
                task.cancel()
            await asyncio.gather(*listening, return_exceptions=True)


async def test_announced_streams_reach_the_other_daemons_not_the_sender(
    runs: str,
) -> None:
    """"I follow these streams" one way, "these got chunks" the other, each to its callback."""
    woken: asyncio.Queue[str | None] = asyncio.Queue()
    heard: asyncio.Queue[list[st.StreamNotice]] = asyncio.Queue()
    followed: asyncio.Queue[list[st.StreamNotice]] = asyncio.Queue()
    heard_a: list[st.StreamNotice] = []
    async with st.PostgresStorage.open(runs, exclusive=False) as a, \
            st.PostgresStorage.open(runs, exclusive=False) as b:
        listening = [
            asyncio.create_task(a.listen_for_runs(
                "A", lambda _r: None, _ignore, on_chunks=heard_a.extend,
                on_followed=heard_a.extend)),
            asyncio.create_task(b.listen_for_runs(
                "B", woken.put_nowait, _ignore, on_chunks=lambda w: heard.put_nowait(list(w)),
                on_followed=lambda f: followed.put_nowait(list(f)))),
        ]
        try:
            assert await _next(woken) is None
            await asyncio.sleep(0.1)  # A listens too
            written = [st.StreamNotice("mine", "out"), st.StreamNotice("mine", "log")]
            await a.announce_followed("A", written[:1])
            await a.announce_chunks("A", written)
            await a.announce_states("A", [st.StatusChange("mine", "completed", None)])
            assert await asyncio.wait_for(followed.get(), 5) == written[:1]
            assert await asyncio.wait_for(heard.get(), 5) == written
            await asyncio.sleep(0.2)
            assert heard_a == [] and heard.empty() and followed.empty()  # not the sender
        finally:
            for task in listening:
                task.cancel()
            await asyncio.gather(*listening, return_exceptions=True)


async def test_an_exclusive_opener_announces_no_chunks(runs: str) -> None:
    """SQLite's rule on PostgreSQL too: a storage opened for one process tells nobody."""
    heard: list[st.StreamNotice] = []
    async with st.PostgresStorage.open(runs, exclusive=False) as listener:
        woken: asyncio.Queue[str | None] = asyncio.Queue()
        listening = asyncio.create_task(listener.listen_for_runs(
            "A", woken.put_nowait, _ignore, on_chunks=heard.extend))
        try:
            assert await _next(woken) is None
            async with st.PostgresStorage.open(runs) as tool:
                await tool.announce_chunks("T", [st.StreamNotice("mine", "out")])
            await asyncio.sleep(0.3)
            assert heard == []
        finally:
            listening.cancel()
            await asyncio.gather(listening, return_exceptions=True)


def test_chunk_payloads_stay_under_the_notify_limit() -> None:
    written = [st.StreamNotice(f"r{i}" * 20, f"s{i}") for i in range(1000)]
    payloads = notify.pack_chunks("d" * 36, written)
    assert len(payloads) > 1 and all(len(p.encode()) <= notify.MAX_PAYLOAD for p in payloads)
    assert [w for p in payloads for w in notify.unpack_chunks("other", p)] == written
    assert notify.unpack_chunks("d" * 36, payloads[0]) == []  # its own
    assert notify.unpack_chunks("other", '{"d": "x", "c": [["only-one"]]}') == []
    assert notify.unpack_states("other", payloads[0]) == []  # a chunk payload is no state


def test_payloads_stay_under_the_notify_limit() -> None:
    changes = [st.StatusChange(f"r{i}" * 20, "waiting", "w" * 30) for i in range(1000)]
    payloads = notify.pack_states("d" * 36, changes)
    assert len(payloads) > 1 and all(len(p.encode()) <= notify.MAX_PAYLOAD for p in payloads)
    assert [c for p in payloads for c in notify.unpack_states("other", p)] == changes
    assert notify.unpack_states("d" * 36, payloads[0]) == []  # its own
    assert notify.unpack_states("other", "not json") == []


@pytest.mark.slow  # restarts the session's PostgreSQL (a few seconds)
async def test_listening_comes_back_after_a_database_restart(
    runs: str, pg_cluster: pg.Cluster
) -> None:
    """``pg_ctl restart -m immediate`` cuts every session: the listener reconnects by itself
    (backoff), says so (``None``: look at everything), and hears wakeups and status
    announcements again."""
    woken: asyncio.Queue[str | None] = asyncio.Queue()
    heard: asyncio.Queue[list[st.StatusChange]] = asyncio.Queue()
    async with st.PostgresStorage.open(runs, exclusive=False) as owner:
        listening = asyncio.create_task(owner.listen_for_runs(
            "A", woken.put_nowait, lambda c: heard.put_nowait(list(c))))
        try:
            assert await _next(woken) is None
            await asyncio.to_thread(pg_cluster.restart)
            assert await asyncio.wait_for(woken.get(), 15) is None  # back, by itself
            async with st.PostgresStorage.open(runs, exclusive=False) as other:
                await other.execute(st.SendSignal("mine", "go", 1, sent_at=2.0))
                assert await _next(woken) == "mine"
                await other.announce_states("B", [st.StatusChange("mine", "waiting", "wf")])
                assert await asyncio.wait_for(heard.get(), 5) == [
                    st.StatusChange("mine", "waiting", "wf")]
        finally:
            listening.cancel()
            await asyncio.gather(listening, return_exceptions=True)
