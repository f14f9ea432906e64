"""``PostgresStorage``: the ``storage.Storage`` Protocol on one PostgreSQL database.

Writes go to the group-commit ``Writer`` (one thread, one connection). Reads go through an
asyncpg pool on the caller's loop; they run ``SQLiteStorage``'s read code (one definition of
each query) over connections that rewrite its SQL with ``storage.postgres.dialect``, and a
snapshot is a read-only REPEATABLE READ transaction.

Many daemons (SPEC §13) share one database with ``open(exclusive=False)``: each registers a
lease and its writes are fenced by it (``fence``). ``open(exclusive=True)`` instead holds a
session advisory lock for the life of the storage (a second opener gets ``StorageLocked``):
the one-process tools (tests, ``wf migrate --to``) that must have the database to themselves.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any, TypeVar, cast

import asyncpg

from storage import errors, ops, records
from storage.postgres import notify, schema
from storage.postgres.dialect import to_postgres
from storage.postgres.search import trigram_search
from storage.postgres.translate import translate_errors
from storage.postgres.writer import Writer, WriterStats
from storage.sqlite import rows
from storage.sqlite.storage import SQLiteStorage, list_runs_query
from storage.tally import CommitTally

R = TypeVar("R")
log = logging.getLogger(__name__)

DAEMON_LOCK = 0x77666467  # pg_try_advisory_lock key: one daemon per database in phase 1 ("wfdg")


def redact(url: str) -> str:
    """``url`` without its password, for messages and logs."""
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", url)


class _Conn:
    """The ``aiosqlite`` read surface (``execute_fetchall``) over an asyncpg connection."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn

    @property
    def raw(self) -> asyncpg.Connection:
        return self._conn

    async def execute_fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        return list(await self._conn.fetch(to_postgres(sql), *params))


class _Readers:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[_Conn]:
        with translate_errors():
            async with self._pool.acquire() as conn:
                yield _Conn(conn)

    @asynccontextmanager
    async def snapshot(self) -> AsyncIterator[_Conn]:
        """A read-only transaction: every query sees the same commit."""
        with translate_errors():
            async with self._pool.acquire() as conn, conn.transaction(
                isolation="repeatable_read", readonly=True
            ):
                yield _Conn(conn)


class PostgresStorage:
    """PostgreSQL implementation of ``storage.Storage``. Open with ``PostgresStorage.open``."""

    def __init__(self, url: str, writer: Writer, readers: _Readers, timers: _Readers) -> None:
        self.url = url
        self._writer = writer
        self._readers = readers
        self._timer_reader = timers  # the scheduler's own connection, as on SQLite
        self._settings: dict[str, str] = {}
        self._shared = False  # opened for many daemons (not exclusive)
        self._daemon_id: str | None = None  # set by fence(): not notified of its own writes

    @classmethod
    @asynccontextmanager
    async def open(
        cls,
        url: str,
        *,
        exclusive: bool = True,
        read_connections: int = 4,
        max_batch: int = 4096,
    ) -> AsyncIterator[PostgresStorage]:
        """Connect, migrate if needed, and close everything on exit.

        ``SchemaTooNew`` if a newer build wrote the database; ``StorageLocked`` if
        ``exclusive`` and another process holds the database (one daemon per database).
        """
        where = redact(url)
        with translate_errors():
            lock_conn = await asyncpg.connect(url)
        try:
            if exclusive:
                with translate_errors():
                    got = await lock_conn.fetchval("SELECT pg_try_advisory_lock($1)", DAEMON_LOCK)
                if not got:
                    raise errors.StorageLocked(where)
            with translate_errors():
                await schema.migrate(lock_conn, where)
                settings = {
                    name: str(await lock_conn.fetchval(f"SHOW {name}"))
                    for name in ("synchronous_commit", "fsync", "server_version")
                }
            writer = await Writer.start(url, max_batch=max_batch)
            try:
                with translate_errors():
                    pool = await asyncpg.create_pool(
                        url, min_size=1, max_size=max(1, read_connections),
                        statement_cache_size=512,
                    )
                    timer_pool = await asyncpg.create_pool(url, min_size=1, max_size=1)
                try:
                    storage = cls(url, writer, _Readers(pool), _Readers(timer_pool))
                    storage._settings = settings
                    storage._shared = not exclusive
                    yield storage
                finally:
                    await pool.close()
                    await timer_pool.close()
            finally:
                await writer.close()
        finally:
            await lock_conn.close()  # ends the session: the advisory lock goes with it

    @property
    def failed(self) -> asyncio.Future[BaseException]:
        return self._writer.failed

    def durability(self) -> dict[str, str]:
        return {"synchronous_commit": self._settings.get("synchronous_commit", "unknown"),
                "fsync": self._settings.get("fsync", "unknown")}

    def capabilities(self) -> records.StorageCapabilities:
        return records.StorageCapabilities(
            backend="postgres", version=self._settings.get("server_version", "unknown"),
            location=redact(self.url), many_daemons=self._shared, fenced=True,
        )

    def stats(self) -> WriterStats:
        return self._writer.stats()

    def commit_tally(self) -> CommitTally:
        """The writer's group commits: sizes and times (``/metrics`` histograms)."""
        return self._writer.commits

    # --- writes --------------------------------------------------------------------------------

    def fence(self, daemon_id: str, lease: float) -> None:
        self._daemon_id = daemon_id
        self._writer.fence(daemon_id, lease)

    async def commit(self, batch: Sequence[ops.WriteOp[Any]]) -> list[Any]:
        if not batch:
            return []
        results = await self._writer.submit(batch)
        await self._notify_owners(batch, results)
        return results

    async def execute(self, op: ops.WriteOp[R]) -> R:
        return cast(R, (await self.commit((op,)))[0])

    async def _notify_owners(self, batch: Sequence[ops.WriteOp[Any]], results: list[Any]) -> None:
        """After COMMIT returned: wake the owners of the runs ``batch`` resolved, cancelled or
        paused (SPEC §13). Only with many daemons; a failure here loses no data (the owner's
        poll finds the change), so it is logged, never raised to a caller whose op committed."""
        if not self._shared:
            return
        runs = notify.runs_to_wake(batch, results)
        if not runs:
            return
        try:
            async with self._readers.connection() as conn:
                await conn.raw.execute(notify.NOTIFY_OWNERS, sorted(runs), self._daemon_id)
        except Exception as exc:  # the poll is the fallback
            log.warning("notify.failed: %r", exc)

    async def listen_for_runs(
        self,
        daemon_id: str,
        on_wake: Callable[[str | None], None],
        on_states: Callable[[Sequence[records.StatusChange]], None],
        on_chunks: Callable[[Sequence[records.StreamNotice]], None] | None = None,
        on_followed: Callable[[Sequence[records.StreamNotice]], None] | None = None,
    ) -> None:
        await notify.listen(self.url, daemon_id, on_wake, on_states,
                            on_chunks=on_chunks, on_followed=on_followed)

    async def announce_states(
        self, daemon_id: str, changes: Sequence[records.StatusChange]
    ) -> None:
        if not self._shared or not changes:
            return
        try:
            async with self._readers.connection() as conn:
                await conn.raw.execute(notify.NOTIFY_STATES, notify.pack_states(daemon_id, changes))
        except Exception as exc:  # a hint: the listeners' polls are the fallback
            log.warning("notify.states_failed: %r", exc)

    async def announce_chunks(
        self, daemon_id: str, written: Sequence[records.StreamNotice]
    ) -> None:
        await self._announce_streams(notify.NOTIFY_CHUNKS, daemon_id, written)

    async def announce_followed(
        self, daemon_id: str, followed: Sequence[records.StreamNotice]
    ) -> None:
        await self._announce_streams(notify.NOTIFY_FOLLOWED, daemon_id, followed)

    async def _announce_streams(
        self, statement: str, daemon_id: str, notices: Sequence[records.StreamNotice]
    ) -> None:
        if not self._shared or not notices:
            return
        try:
            async with self._readers.connection() as conn:
                await conn.raw.execute(statement, notify.pack_chunks(daemon_id, notices))
        except Exception as exc:  # a hint: the followers' polls are the fallback
            log.warning("notify.streams_failed: %r", exc)

    async def create_run(self, run: ops.CreateRun) -> ops.RunCreated:
        return await self.execute(run)

    async def record_event(self, event: ops.RecordEvent) -> ops.EventRecorded:
        return await self.execute(event)

    async def send_signal(self, signal: ops.SendSignal) -> ops.SignalSent:
        return await self.execute(signal)

    async def complete_token(self, completion: ops.CompleteToken) -> records.WaitpointRecord:
        return await self.execute(completion)

    async def claim_due_timers(self, before: float, limit: int = 1000) -> list[ops.FiredTimer]:
        fired: tuple[ops.FiredTimer, ...] = await self.execute(ops.ClaimDueTimers(before, limit))
        return list(fired)

    # --- reads: SQLiteStorage's code over the translating readers ------------------------------

    async def _fetch(
        self, sql: str, params: Sequence[Any] = (), *, pool: _Readers | None = None
    ) -> list[Any]:
        async with (pool or self._readers).connection() as conn:
            return await conn.execute_fetchall(sql, params)

    @property
    def _sql(self) -> Any:
        # SQLiteStorage's read methods touch only _fetch, _readers and _timer_reader, which
        # this class provides with the same shapes.
        return cast(Any, self)

    async def get_run(self, run_id: str) -> records.RunRecord | None:
        return await SQLiteStorage.get_run(self._sql, run_id)

    async def list_runs(
        self,
        *,
        status: records.RunStatus | None = None,
        workflow_id: str | None = None,
        tag: str | None = None,
        since: float | None = None,
        until: float | None = None,
        search: str | None = None,
        limit: int | None = 100,
    ) -> list[records.RunRecord]:
        sql, params = list_runs_query(
            status=status, workflow_id=workflow_id, tag=tag, since=since, until=until,
            search=search, limit=limit, search_clause=trigram_search,
        )
        return [rows.run_from_row(r) for r in await self._fetch(sql, params)]

    async def count_prunable(
        self,
        statuses: tuple[records.RunStatus, ...],
        before: float,
        workflow_id: str | None = None,
    ) -> int:
        return await SQLiteStorage.count_prunable(self._sql, statuses, before, workflow_id)

    async def paused_workflows(self) -> list[str]:
        return await SQLiteStorage.paused_workflows(self._sql)

    async def run_archives(self, run_id: str) -> list[records.ArchiveRecord]:
        return await SQLiteStorage.run_archives(self._sql, run_id)

    async def non_terminal_runs(self) -> list[records.RunRecord]:
        return await SQLiteStorage.non_terminal_runs(self._sql)

    async def list_daemons(self) -> list[records.DaemonRecord]:
        return await SQLiteStorage.list_daemons(self._sql)

    async def owned_runs_to_move(self, daemon_id: str) -> list[str]:
        return await SQLiteStorage.owned_runs_to_move(self._sql, daemon_id)

    async def owned_runs(self, daemon_id: str) -> list[str]:
        return await SQLiteStorage.owned_runs(self._sql, daemon_id)

    async def paused_runs(self, daemon_id: str, among: Sequence[str] = ()) -> list[str]:
        return await SQLiteStorage.paused_runs(self._sql, daemon_id, among)

    async def throttle_starts(self, since: float) -> list[tuple[str, float]]:
        return await SQLiteStorage.throttle_starts(self._sql, since)

    async def concurrency_groups(
        self, at: float, groups: Sequence[ops.GroupKey] | None = None
    ) -> list[records.GroupState]:
        return await SQLiteStorage.concurrency_groups(self._sql, at, groups)

    async def pending_batches(
        self, workflow_id: str | None = None, batch_key: str | None = None
    ) -> list[records.PendingBatch]:
        return await SQLiteStorage.pending_batches(self._sql, workflow_id, batch_key)

    async def load_journal(self, run_id: str) -> records.Journal:
        return await SQLiteStorage.load_journal(self._sql, run_id)

    async def get_waitpoint(self, run_id: str, wp_id: str) -> records.WaitpointRecord | None:
        return await SQLiteStorage.get_waitpoint(self._sql, run_id, wp_id)

    async def waiting_waitpoints_for_event(self, event_type: str) -> list[records.WaitpointRecord]:
        return await SQLiteStorage.waiting_waitpoints_for_event(self._sql, event_type)

    async def get_event(self, event_id: str) -> records.EventRecord | None:
        return await SQLiteStorage.get_event(self._sql, event_id)

    async def recent_events(
        self, *, type: str | None = None, before: float | None = None, limit: int = 50
    ) -> list[records.EventRecord]:
        return await SQLiteStorage.recent_events(self._sql, type=type, before=before,
                                                 limit=limit)

    async def event_resolutions(
        self, event_ids: Sequence[str]
    ) -> dict[str, list[tuple[str, str]]]:
        return await SQLiteStorage.event_resolutions(self._sql, event_ids)

    async def existing_runs(self, run_ids: Sequence[str]) -> set[str]:
        return await SQLiteStorage.existing_runs(self._sql, run_ids)

    async def signal_inbox(
        self, run_id: str, name: str | None = None
    ) -> list[records.SignalRecord]:
        return await SQLiteStorage.signal_inbox(self._sql, run_id, name)

    async def get_token(self, token_id: str) -> records.TokenRecord | None:
        return await SQLiteStorage.get_token(self._sql, token_id)

    async def next_timer_due(self) -> float | None:
        return await SQLiteStorage.next_timer_due(self._sql)

    async def waiting_by_kind(self) -> dict[str, int]:
        return await SQLiteStorage.waiting_by_kind(self._sql)

    async def due_timers(self, before: float, limit: int) -> list[records.TimerRecord]:
        return await SQLiteStorage.due_timers(self._sql, before, limit)

    async def stream_chunks(
        self, run_id: str, stream_id: str, after_seq: int = -1, limit: int | None = None
    ) -> list[records.StreamChunk]:
        return await SQLiteStorage.stream_chunks(self._sql, run_id, stream_id, after_seq, limit)

    async def list_schedules(self) -> list[records.ScheduleRecord]:
        return await SQLiteStorage.list_schedules(self._sql)

    async def get_schedule(self, name: str) -> records.ScheduleRecord | None:
        return await SQLiteStorage.get_schedule(self._sql, name)

    async def get_rate_limit(self, key: str) -> records.RateLimitState | None:
        return await SQLiteStorage.get_rate_limit(self._sql, key)

    async def counts(self) -> records.StorageCounts:
        return await SQLiteStorage.counts(self._sql)
