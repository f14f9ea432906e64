"""``SQLiteStorage``: the ``storage.Storage`` Protocol on one SQLite file.

Writes go to the group-commit ``Writer`` (one thread, one connection). Reads go through a small
pool of aiosqlite connections in WAL mode, so they read the last committed state and never wait
behind a batch that is being written.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite

from storage import errors, ops, protocol, records
from storage.instruments import NO_INSTRUMENT, Instrument
from storage.sqlite import admission, daemons, pragmas, retention, rows
from storage.sqlite.translate import translate_errors
from storage.sqlite.writer import SetMaxPageCount, Writer, WriterStats
from storage.tally import CommitTally

R = TypeVar("R")

_NON_TERMINAL = tuple(sorted(s.value for s in records.NON_TERMINAL_STATUSES))
_IN_NON_TERMINAL = ", ".join("?" for _ in _NON_TERMINAL)


class _Readers:
    """A fixed pool of read connections; each is used by one coroutine at a time."""

    def __init__(self, conns: list[aiosqlite.Connection]) -> None:
        self._conns = conns
        self._free: asyncio.Queue[aiosqlite.Connection] = asyncio.Queue()
        self._resets: set[asyncio.Task[None]] = set()
        for conn in conns:
            self._free.put_nowait(conn)

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[aiosqlite.Connection]:
        conn = await self._free.get()
        clean = False
        try:
            yield conn
            clean = True
        finally:
            if clean:
                self._free.put_nowait(conn)
            else:
                # Cancelled or failed mid-use (a client that vanished with a read in flight):
                # statements it queued may still run on the connection's thread, a BEGIN among
                # them. Roll back after them, then return the connection to the pool.
                task = asyncio.get_running_loop().create_task(self._reset(conn))
                self._resets.add(task)
                task.add_done_callback(self._resets.discard)

    async def _reset(self, conn: aiosqlite.Connection) -> None:
        try:
            await conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass  # no transaction was open: nothing to undo
        finally:
            self._free.put_nowait(conn)

    @asynccontextmanager
    async def snapshot(self) -> AsyncIterator[aiosqlite.Connection]:
        """A connection inside a read transaction: every query sees the same commit."""
        async with self.connection() as conn:
            await conn.execute("BEGIN")
            yield conn
            await conn.execute("COMMIT")

    async def close(self) -> None:
        for conn in self._conns:
            await conn.close()


class SQLiteStorage:
    """SQLite implementation of ``storage.Storage``. Open with ``SQLiteStorage.open``."""

    def __init__(self, path: Path, writer: Writer, readers: _Readers, timers: _Readers) -> None:
        self.path = path
        self._writer = writer
        self._readers = readers
        # The scheduler's own connection: a flood of client reads (10k `wait`s, a busy `list`)
        # must not hold up the question "what is due next?" and so make every timer late.
        self._timer_reader = timers

    @classmethod
    @asynccontextmanager
    async def open(
        cls,
        path: str | Path,
        *,
        synchronous: pragmas.Synchronous = "full",
        busy_timeout_ms: int = 5000,
        max_page_count: int | None = None,
        read_connections: int = 2,
        max_batch: int = 4096,
        instrument: Instrument = NO_INSTRUMENT,
    ) -> AsyncIterator[SQLiteStorage]:
        """Open (creating with mode 0600 and migrating if needed) and close on exit.

        ``SchemaTooNew`` if the file was written by a newer build. ``max_page_count`` caps the
        database size (tests of disk full). Every connection and thread is closed on exit.
        """
        db = Path(path)
        pragmas.pragma_statements(synchronous=synchronous, busy_timeout_ms=0, writer=True)
        writer = await Writer.start(
            db,
            synchronous=synchronous,
            busy_timeout_ms=busy_timeout_ms,
            max_page_count=max_page_count,
            max_batch=max_batch,
            instrument=instrument,
        )
        conns: list[aiosqlite.Connection] = []
        try:
            for _ in range(max(1, read_connections) + 1):  # the last one is the scheduler's
                with translate_errors():
                    conn = await aiosqlite.connect(db, isolation_level=None)
                conns.append(conn)
                with translate_errors():
                    for stmt in pragmas.pragma_statements(
                        synchronous=synchronous, busy_timeout_ms=busy_timeout_ms, writer=False
                    ):
                        await conn.execute(stmt)
            storage = cls(db, writer, _Readers(conns[:-1]), _Readers(conns[-1:]))
            yield storage
        finally:
            await writer.close()
            for conn in conns:
                await conn.close()

    @property
    def failed(self) -> asyncio.Future[BaseException]:
        return self._writer.failed

    def durability(self) -> dict[str, str]:
        stats = self._writer.stats()
        return {"synchronous": stats.synchronous, "journal_mode": stats.journal_mode}

    def capabilities(self) -> records.StorageCapabilities:
        return records.StorageCapabilities(
            backend="sqlite", version=sqlite3.sqlite_version, location=str(self.path),
            many_daemons=False, file=str(self.path),
        )

    # --- writes --------------------------------------------------------------------------------

    def fence(self, daemon_id: str, lease: float) -> None:
        """One daemon per file (the lock file): nobody can take its runs, nothing to fence."""

    async def commit(self, batch: Sequence[ops.WriteOp[Any]]) -> list[Any]:
        if not batch:
            return []
        return await self._writer.submit(batch)

    async def execute(self, op: ops.WriteOp[R]) -> R:
        result: R = (await self._writer.submit((op,)))[0]
        return result

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

    async def set_max_page_count(self, pages: int) -> int:
        """SQLite-only: change the writer's page limit; returns the limit now in force."""
        return await self.execute(SetMaxPageCount(pages))

    def stats(self) -> WriterStats:
        return self._writer.stats()

    def commit_tally(self) -> CommitTally:
        """The writer's group commits: sizes and times (``/metrics`` histograms)."""
        return self._writer.commits

    # --- reads ---------------------------------------------------------------------------------

    async def _fetch(
        self, sql: str, params: Sequence[Any] = (), *, pool: _Readers | None = None
    ) -> list[rows.Row]:
        with translate_errors():
            async with (pool or self._readers).connection() as conn:
                return list(await conn.execute_fetchall(sql, params))

    async def get_run(self, run_id: str) -> records.RunRecord | None:
        found = await self._fetch(
            f"SELECT {rows.RUN_COLUMNS} FROM runs WHERE run_id = ?", (run_id,)
        )
        return rows.run_from_row(found[0]) if found else None

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
        sql, params = list_runs_query(status=status, workflow_id=workflow_id, tag=tag,
                                      since=since, until=until, search=search, limit=limit)
        return [rows.run_from_row(r) for r in await self._fetch(sql, params)]

    async def count_prunable(
        self,
        statuses: tuple[records.RunStatus, ...],
        before: float,
        workflow_id: str | None = None,
    ) -> int:
        sql, params = retention.count_prunable_sql(statuses, before, workflow_id)
        return int((await self._fetch(sql, params))[0][0])

    async def paused_workflows(self) -> list[str]:
        found = await self._fetch("SELECT workflow_id FROM paused_workflows ORDER BY workflow_id")
        return [str(r[0]) for r in found]

    async def run_archives(self, run_id: str) -> list[records.ArchiveRecord]:
        found = await self._fetch(
            f"SELECT {rows.ARCHIVE_COLUMNS} FROM run_archive WHERE run_id = ? ORDER BY seq",
            (run_id,),
        )
        return [rows.archive_from_row(r) for r in found]

    async def non_terminal_runs(self) -> list[records.RunRecord]:
        found = await self._fetch(
            f"SELECT {rows.RUN_COLUMNS} FROM runs WHERE status IN ({_IN_NON_TERMINAL}) "
            "ORDER BY number",
            _NON_TERMINAL,
        )
        return [rows.run_from_row(r) for r in found]

    async def list_daemons(self) -> list[records.DaemonRecord]:
        return [daemons.daemon_from_row(r) for r in await self._fetch(daemons.LIST_DAEMONS)]

    async def listen_for_runs(
        self,
        daemon_id: str,
        on_wake: Callable[[str | None], None],
        on_states: Callable[[Sequence[records.StatusChange]], None],
        on_chunks: Callable[[Sequence[records.StreamNotice]], None] | None = None,
        on_followed: Callable[[Sequence[records.StreamNotice]], None] | None = None,
    ) -> None:
        return  # one daemon per file: nobody else resolves our runs

    async def announce_states(
        self, daemon_id: str, changes: Sequence[records.StatusChange]
    ) -> None:
        return  # one daemon per file: nobody else to tell

    async def announce_chunks(
        self, daemon_id: str, written: Sequence[records.StreamNotice]
    ) -> None:
        return  # one daemon per file: its followers hear its chunks in memory

    async def announce_followed(
        self, daemon_id: str, followed: Sequence[records.StreamNotice]
    ) -> None:
        return  # one daemon per file: it writes every chunk its followers read

    async def owned_runs_to_move(self, daemon_id: str) -> list[str]:
        return [r[0] for r in await self._fetch(daemons.OWNED_TO_RESUME, (daemon_id,))]

    async def owned_runs(self, daemon_id: str) -> list[str]:
        return [r[0] for r in await self._fetch(daemons.OWNED_LIVE, (daemon_id,))]

    async def paused_runs(self, daemon_id: str, among: Sequence[str] = ()) -> list[str]:
        found = {r[0] for r in await self._fetch(daemons.OWNED_PAUSED, (daemon_id,))}
        ids = sorted(set(among) - found)
        for start in range(0, len(ids), daemons.PAUSED_CHUNK):
            chunk = ids[start:start + daemons.PAUSED_CHUNK]
            found.update(r[0] for r in await self._fetch(daemons.paused_among(len(chunk)), chunk))
        return sorted(found)

    async def throttle_starts(self, since: float) -> list[tuple[str, float]]:
        found = await self._fetch(
            "SELECT throttle_key, started_at FROM runs WHERE throttle_key IS NOT NULL "
            "AND started_at >= ? ORDER BY started_at",
            (since,),
        )
        return [(str(key), float(at)) for key, at in found]

    async def concurrency_groups(
        self, at: float, groups: Sequence[ops.GroupKey] | None = None
    ) -> list[records.GroupState]:
        wanted = None if groups is None else list(dict.fromkeys(groups))
        texts = [] if wanted is None else [admission.group_text(g) for g in wanted]
        holders_sql, queued_sql = admission.group_states_sql(
            None if wanted is None else len(texts))
        holders: dict[str, list[str]] = {}
        for grp, run_id in await self._fetch(holders_sql, texts):
            holders.setdefault(str(grp), []).append(str(run_id))
        queued = {str(grp): int(n) for grp, n in await self._fetch(queued_sql, (at, at, *texts))}
        if wanted is None:
            texts = sorted(set(holders) | set(queued))
        return [records.GroupState(admission.group_key(t), tuple(holders.get(t, ())),
                                   queued.get(t, 0)) for t in texts]

    async def pending_batches(
        self, workflow_id: str | None = None, batch_key: str | None = None
    ) -> list[records.PendingBatch]:
        sql = ("SELECT workflow_id, batch_key, event_id, payload, received_at FROM event_batches"
               "{} ORDER BY workflow_id, batch_key, received_at, event_id")
        if workflow_id is not None and batch_key is not None:
            found = await self._fetch(sql.format(" WHERE workflow_id = ? AND batch_key = ?"),
                                      (workflow_id, batch_key))
        else:
            found = await self._fetch(sql.format(""))
        batches: dict[tuple[str, str], list[records.BatchedEvent]] = {}
        for wf, key, event_id, payload, at in found:
            batches.setdefault((wf, key), []).append(
                records.BatchedEvent(event_id, rows.loads(payload), at)
            )
        return [records.PendingBatch(wf, key, tuple(events))
                for (wf, key), events in batches.items()]

    async def load_journal(self, run_id: str) -> records.Journal:
        key = (run_id,)
        with translate_errors():
            async with self._readers.snapshot() as conn:
                run = list(
                    await conn.execute_fetchall(
                        f"SELECT {rows.RUN_COLUMNS} FROM runs WHERE run_id = ?", key
                    )
                )
                if not run:
                    raise errors.NotFound("run", run_id)
                step_rows = await conn.execute_fetchall(
                    f"SELECT {rows.STEP_COLUMNS} FROM steps s JOIN runs r ON r.number = s.run_no "
                    "WHERE r.run_id = ? ORDER BY s.position, s.step_id",
                    key,
                )
                attempt_rows = await conn.execute_fetchall(
                    f"SELECT {rows.ATTEMPT_COLUMNS} FROM step_attempts a "
                    "JOIN runs r ON r.number = a.run_no WHERE r.run_id = ? "
                    "ORDER BY a.step_id, a.attempt",
                    key,
                )
                waitpoints = await conn.execute_fetchall(
                    f"SELECT {rows.WAITPOINT_COLUMNS} FROM waitpoints WHERE run_id = ? "
                    "ORDER BY registered_at, rowid",
                    key,
                )
                compensations = await conn.execute_fetchall(
                    f"SELECT {rows.COMPENSATION_COLUMNS} FROM compensations WHERE run_id = ? "
                    "ORDER BY seq",
                    key,
                )
                metadata = await conn.execute_fetchall(
                    "SELECT key, value FROM metadata WHERE run_id = ? ORDER BY key", key
                )
                cursor = list(
                    await conn.execute_fetchall(
                        "SELECT last_op_index FROM metadata_cursor WHERE origin_run_id = ?", key
                    )
                )
                chunk_rows = await conn.execute_fetchall(
                    f"SELECT {rows.CHUNK_COLUMNS} FROM stream_chunks WHERE run_id = ? "
                    "ORDER BY stream_id, seq",
                    key,
                )
                amendment_rows = await conn.execute_fetchall(
                    f"SELECT {rows.AMENDMENT_COLUMNS} FROM run_amendments WHERE run_id = ? "
                    "ORDER BY seq",
                    key,
                )
                reopen_rows = await conn.execute_fetchall(
                    "SELECT a.journal FROM run_archive a JOIN runs r ON r.run_id = a.run_id "
                    "WHERE a.run_id = ? AND a.mode = 'resume' AND a.attempt = r.attempt",
                    key,
                )
        reopened = frozenset(
            step["step_id"]
            for (journal,) in reopen_rows
            for step in (rows.loads(journal) or {}).get("undone_steps", ())
        )
        stream_chunks = tuple(rows.chunk_from_row(r) for r in chunk_rows)
        step_records = tuple(rows.step_from_row(r) for r in step_rows)
        # The latest attempt of each step lives in `steps`; earlier ones in `step_attempts`.
        history = [rows.attempt_from_row(r) for r in attempt_rows]
        history.extend(
            records.StepAttemptRecord(
                s.run_id,
                s.step_id,
                s.attempt,
                s.status,
                s.output,
                s.error,
                s.started_at,
                s.finished_at,
                s.retry_at,
                s.journal_seq,
            )
            for s in step_records
        )
        history.sort(key=lambda a: (a.step_id, a.attempt))
        return records.Journal(
            run=rows.run_from_row(run[0]),
            steps=step_records,
            attempts=tuple(history),
            waitpoints=tuple(rows.waitpoint_from_row(r) for r in waitpoints),
            compensations=tuple(rows.compensation_from_row(r) for r in compensations),
            metadata={k: rows.loads(v) for k, v in metadata},
            stream_chunks=stream_chunks,
            completed_streams=frozenset(c.stream_id for c in stream_chunks if c.final),
            metadata_ops=cursor[0][0] + 1 if cursor else 0,
            reopened_steps=reopened,
            amendments=tuple(rows.amendment_from_row(r) for r in amendment_rows),
        )

    async def get_waitpoint(self, run_id: str, wp_id: str) -> records.WaitpointRecord | None:
        found = await self._fetch(
            f"SELECT {rows.WAITPOINT_COLUMNS} FROM waitpoints WHERE run_id = ? AND wp_id = ?",
            (run_id, wp_id),
        )
        return rows.waitpoint_from_row(found[0]) if found else None

    async def waiting_waitpoints_for_event(self, event_type: str) -> list[records.WaitpointRecord]:
        found = await self._fetch(WAITING_FOR_EVENT_SQL, (event_type,))
        return [rows.waitpoint_from_row(r) for r in found]

    async def get_event(self, event_id: str) -> records.EventRecord | None:
        found = await self._fetch(
            f"SELECT {rows.EVENT_COLUMNS} FROM events WHERE event_id = ?", (event_id,)
        )
        return rows.event_from_row(found[0]) if found else None

    async def recent_events(
        self, *, type: str | None = None, before: float | None = None, limit: int = 50
    ) -> list[records.EventRecord]:
        sql, params = recent_events_query(type=type, before=before, limit=limit)
        return [rows.event_from_row(r) for r in await self._fetch(sql, params)]

    async def event_resolutions(
        self, event_ids: Sequence[str]
    ) -> dict[str, list[tuple[str, str]]]:
        out: dict[str, list[tuple[str, str]]] = {}
        for start in range(0, len(event_ids), 500):  # under SQLite's bound-parameter limit
            chunk = list(event_ids[start:start + 500])
            marks = ", ".join("?" * len(chunk))
            found = await self._fetch(
                "SELECT matched_event_id, run_id, wp_id FROM waitpoints "
                f"WHERE matched_event_id IN ({marks}) ORDER BY resolved_at, rowid", chunk)
            for event_id, run_id, wp_id in found:
                out.setdefault(event_id, []).append((run_id, wp_id))
        return out

    async def existing_runs(self, run_ids: Sequence[str]) -> set[str]:
        out: set[str] = set()
        for start in range(0, len(run_ids), 500):
            chunk = list(run_ids[start:start + 500])
            marks = ", ".join("?" * len(chunk))
            found = await self._fetch(f"SELECT run_id FROM runs WHERE run_id IN ({marks})", chunk)
            out.update(r[0] for r in found)
        return out

    async def signal_inbox(
        self, run_id: str, name: str | None = None
    ) -> list[records.SignalRecord]:
        if name is None:
            sql = f"SELECT {rows.SIGNAL_COLUMNS} FROM signal_inbox WHERE run_id = ? ORDER BY seq"
            params: tuple[str, ...] = (run_id,)
        else:
            sql = INBOX_SQL
            params = (run_id, name)
        return [rows.signal_from_row(r) for r in await self._fetch(sql, params)]

    async def get_token(self, token_id: str) -> records.TokenRecord | None:
        found = await self._fetch(
            "SELECT t.token_id, t.run_id, t.wp_id, t.created_at, w.status FROM tokens t "
            "JOIN waitpoints w ON w.run_id = t.run_id AND w.wp_id = t.wp_id "
            "WHERE t.token_id = ?",
            (token_id,),
        )
        return rows.token_from_row(found[0]) if found else None

    async def next_timer_due(self) -> float | None:
        found = await self._fetch(NEXT_TIMER_SQL, pool=self._timer_reader)
        value = found[0][0] if found else None
        return None if value is None else float(value)

    async def waiting_by_kind(self) -> dict[str, int]:
        found = await self._fetch(
            "SELECT kind, count(*) FROM waitpoints WHERE status = 'waiting' GROUP BY kind")
        return {str(kind): int(n) for kind, n in found}

    async def due_timers(self, before: float, limit: int) -> list[records.TimerRecord]:
        found = await self._fetch(DUE_TIMERS_SQL, (before, limit))
        return [rows.timer_from_row(r) for r in found]

    async def stream_chunks(
        self, run_id: str, stream_id: str, after_seq: int = -1, limit: int | None = None
    ) -> list[records.StreamChunk]:
        found = await self._fetch(
            f"SELECT {rows.CHUNK_COLUMNS} FROM stream_chunks WHERE run_id = ? AND stream_id = ? "
            "AND seq > ? ORDER BY seq LIMIT ?",
            (run_id, stream_id, after_seq, -1 if limit is None else limit),
        )
        return [rows.chunk_from_row(r) for r in found]

    async def list_schedules(self) -> list[records.ScheduleRecord]:
        found = await self._fetch(f"SELECT {rows.SCHEDULE_COLUMNS} FROM schedules ORDER BY name")
        return [rows.schedule_from_row(r) for r in found]

    async def get_schedule(self, name: str) -> records.ScheduleRecord | None:
        found = await self._fetch(
            f"SELECT {rows.SCHEDULE_COLUMNS} FROM schedules WHERE name = ?", (name,)
        )
        return rows.schedule_from_row(found[0]) if found else None

    async def get_rate_limit(self, key: str) -> records.RateLimitState | None:
        found = await self._fetch(
            "SELECT key, tokens, updated_at FROM rate_limits WHERE key = ?", (key,)
        )
        return records.RateLimitState(*found[0]) if found else None

    async def counts(self) -> records.StorageCounts:
        with translate_errors():
            async with self._readers.snapshot() as conn:
                by_status = await conn.execute_fetchall(
                    "SELECT status, count(*) FROM runs GROUP BY status"
                )
                totals = list(
                    await conn.execute_fetchall(
                        "SELECT (SELECT count(*) FROM waitpoints WHERE status = 'waiting'), "
                        "(SELECT count(*) FROM timers), (SELECT count(*) FROM events), "
                        "(SELECT count(*) FROM signal_inbox), (SELECT count(*) FROM schedules)"
                    )
                )
        waiting, timers, events, inbox, schedules = totals[0]
        return records.StorageCounts(
            runs_by_status={status: n for status, n in by_status},
            waiting_waitpoints=waiting,
            timers=timers,
            events=events,
            inbox_signals=inbox,
            schedules=schedules,
        )


# Hot queries, named so the query-plan test checks exactly what runs here.
WAITING_FOR_EVENT_SQL = (
    f"SELECT {rows.WAITPOINT_COLUMNS} FROM waitpoints "
    "WHERE event_type = ? AND status = 'waiting' AND kind = 'EVENT' ORDER BY registered_at, rowid"
)
INBOX_SQL = (
    f"SELECT {rows.SIGNAL_COLUMNS} FROM signal_inbox WHERE run_id = ? AND name = ? ORDER BY seq"
)
NEXT_TIMER_SQL = "SELECT min(due_at) FROM timers"
DUE_TIMERS_SQL = (
    f"SELECT {rows.TIMER_COLUMNS} FROM timers WHERE due_at <= ? ORDER BY due_at, timer_id LIMIT ?"
)


def recent_events_query(
    *, type: str | None, before: float | None, limit: int
) -> tuple[str, list[Any]]:
    """SQL for ``recent_events``: newest first off ``events_received`` (or, with a type,
    ``events_type_received``)."""
    where: list[str] = []
    params: list[Any] = []
    if type is not None:
        where.append("type = ?")
        params.append(type)
    if before is not None:
        where.append("received_at < ?")
        params.append(before)
    clause = f" WHERE {' AND '.join(where)}" if where else ""
    params.append(limit)
    return (f"SELECT {rows.EVENT_COLUMNS} FROM events{clause} "
            "ORDER BY received_at DESC LIMIT ?", params)


def check_search(text: str) -> str:
    """``text`` if long enough to search for: the trigram indexes need 3 characters."""
    if len(text) < protocol.SEARCH_MIN_CHARS:
        raise ValueError(
            f"search: needs at least {protocol.SEARCH_MIN_CHARS} characters, got {text!r}"
        )
    return text


def search_phrase(text: str) -> str:
    """``text`` as one FTS5 phrase: matched as a literal substring (case-insensitive), so quotes,
    operators and punctuation in it mean nothing special. The trigram index needs 3 characters."""
    return '"' + check_search(text).replace('"', '""') + '"'


SearchClause = Callable[[str], tuple[str, Any]]
"""The ``list_runs(search=)`` condition of a backend: ``text`` → (SQL over ``runs``, parameter)."""


def fts_search(text: str) -> tuple[str, Any]:
    """SQLite's search condition: the FTS5 trigram table ``run_search``, up to three documents
    per run with rowid = number * 4 + part (migration 0015)."""
    return ("runs.number IN (SELECT rowid / 4 FROM run_search WHERE run_search MATCH ?)",
            search_phrase(text))


def list_runs_query(
    *,
    status: records.RunStatus | None,
    workflow_id: str | None,
    tag: str | None,
    limit: int | None,
    since: float | None = None,
    until: float | None = None,
    search: str | None = None,
    search_clause: SearchClause = fts_search,
) -> tuple[str, list[Any]]:
    """SQL for ``list_runs``: newest first, driven by the most selective index available."""
    where: list[str] = []
    params: list[Any] = []
    if search is not None:
        clause, param = search_clause(search)
        where.append(clause)
        params.append(param)
    source = "runs"
    if tag is not None:
        source = "run_tags JOIN runs USING (run_id)"
        where.append("run_tags.tag = ?")
        params.append(tag)
    if status is not None:
        where.append("runs.status = ?")
        params.append(records.RunStatus(status).value)
    if workflow_id is not None:
        where.append("runs.workflow_id = ?")
        params.append(workflow_id)
    if since is not None:
        where.append("runs.created_at >= ?")
        params.append(since)
    if until is not None:
        where.append("runs.created_at < ?")
        params.append(until)
    cols = ", ".join(f"runs.{c.strip()}" for c in rows.RUN_COLUMNS.split(","))
    sql = f"SELECT {cols} FROM {source}"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY runs.created_at DESC, runs.number DESC LIMIT ?"
    params.append(-1 if limit is None else limit)
    return sql, params
