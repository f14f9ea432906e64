"""The PostgreSQL group-commit writer: one thread, one connection, one transaction per batch.

Like ``storage.sqlite.writer``: callers on the event loop enqueue ``(ops, future)``; the thread
drains what is queued (up to ``max_batch``) and applies it in one transaction, then wakes every
caller once COMMIT returned (``synchronous_commit`` as the server has it: ``on`` by default).

The op functions are SQLite's own (``storage.sqlite.mutations`` and friends) run through
``storage.postgres.dialect``: one definition of what each op does, two dialects.

Savepoints are costly on PostgreSQL (a subtransaction each; past 64 per transaction every
snapshot slows), so the batch first runs *optimistically*, every caller straight into the one
transaction, first step attempts and run updates as set-based statements (many callers' rows
in one statement). Only if some caller's op fails is the transaction rolled back and the
batch replayed with one savepoint per caller, so the failure stays that caller's. Ops are
deterministic in the database state, so the replay computes the
same results for the callers that did not fail.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import asyncpg

from storage import errors, ops
from storage.postgres import claims, locks, retention
from storage.postgres.dialect import SyncConnection
from storage.postgres.translate import connection_unusable, is_batch_fatal, translate
from storage.sqlite import admission, daemons, interventions, journal_edits, mutations, schedules
from storage.sqlite.daemons import DB_NOW
from storage.tally import CommitTally

log = logging.getLogger(__name__)

_Request = tuple[Sequence[ops.WriteOp[Any]], "asyncio.Future[list[Any]]"]
_Outcome = tuple["asyncio.Future[list[Any]]", bool, Any]
_APPLY: dict[type[Any], mutations.Apply] = {
    **mutations.APPLY, **schedules.APPLY, **interventions.APPLY, **retention.APPLY,
    **journal_edits.APPLY, **daemons.APPLY, **admission.APPLY, **claims.APPLY,
}
# The writer's lease check, first in every batch of a fenced daemon (SPEC §13).
_FENCE = f"SELECT 1 FROM daemons WHERE daemon_id = ? AND lease_until > {DB_NOW} FOR SHARE"
_FOREIGN_RUNS = ("SELECT run_id FROM runs WHERE run_id = ANY(?) AND owner IS NOT NULL "
                 "AND owner <> ?")
_STEP_CHUNKS = (256, 64, 16, 4, 1)  # 256 rows x 11 parameters stays far below 32767
_DEADLOCK_RETRIES = 3
_RETRY_WHOLE = (asyncpg.exceptions.DeadlockDetectedError, asyncpg.exceptions.SerializationError)
_FENCE_AND_FOREIGN = (
    f"SELECT EXISTS ({_FENCE}), ARRAY(SELECT run_id FROM runs WHERE run_id = ANY(?) "
    "AND owner IS NOT NULL AND owner <> ?)"
)


class _Replay(Exception):
    """A caller's op failed in the optimistic pass: replay the batch with savepoints."""


@dataclass(frozen=True, slots=True)
class WriterStats:
    batches: int
    requests: int
    ops: int
    failed_batches: int
    replayed_batches: int
    largest_batch: int
    queued: int


def _is_coalesced(op: ops.WriteOp[Any]) -> bool:
    """Ops written set-based for many callers at once: first step attempts, run updates."""
    kind = type(op)
    return kind is ops.UpdateRun or (kind is ops.RecordStepAttempt and cast(Any, op).attempt == 1)


# Ops that leave a run's status row alone, so a pending coalesced update of another run need
# not be written before them. Anything else (an event resolving some run's wait sets its
# needs_resume, which a pending `running` update clears) writes the pending rows first.
_BESIDE_UPDATES = frozenset({ops.RecordStepAttempt, ops.RegisterWaitpoint, ops.AppendStreamChunk,
                             ops.RecordCompensation, ops.ApplyMetadata, ops.CreateRun})


class _Pending:
    """The coalesced rows of a batch not yet written."""

    __slots__ = ("steps", "updated", "updates")

    def __init__(self) -> None:
        self.steps: list[ops.RecordStepAttempt] = []
        self.updates: list[ops.UpdateRun] = []
        self.updated: set[str] = set()

    def must_flush_before(self, batch: Sequence[ops.WriteOp[Any]]) -> bool:
        """A caller applied op by op must see the coalesced rows written before it if it
        records a later attempt (it archives the earlier one) or may touch an updated run."""
        if self.steps and any(type(op) is ops.RecordStepAttempt and op.attempt > 1
                              for op in batch):
            return True
        return bool(self.updates) and any(
            type(op) not in _BESIDE_UPDATES or cast(Any, op).run_id in self.updated
            for op in batch)

    def clear(self) -> None:
        self.steps.clear()
        self.updates.clear()
        self.updated.clear()


class Writer:
    """Owns the writer thread. Create with ``await Writer.start(dsn)``; stop with ``close()``."""

    def __init__(self, dsn: str, loop: asyncio.AbstractEventLoop, *, max_batch: int) -> None:
        self._dsn = dsn
        self._loop = loop
        self._max_batch = max_batch
        self._queue: queue.SimpleQueue[_Request | None] = queue.SimpleQueue()
        self._closed = False
        self._thread = threading.Thread(target=self._main, name="pg-writer", daemon=True)
        self._ready: asyncio.Future[None] = loop.create_future()
        self._own_loop: asyncio.AbstractEventLoop | None = None
        self._conn: SyncConnection | None = None
        self._batches = self._requests = self._ops = 0
        self._failed = self._replayed = self._largest = 0
        self._deadlocks = 0  # batches retried whole after the server broke a deadlock
        self.commits = CommitTally.new()  # committed batches: size and time to COMMIT
        self._fence_id: str | None = None  # set by fence(): every batch checks the lease
        self._idle_ms = 0  # idle_in_transaction_session_timeout once fenced
        self._session_set = True  # the session settings are in force on the connection
        self._fenced: errors.OwnershipLost | None = None  # the lease was lost: terminal
        # A lost connection is not lost data (PostgreSQL keeps what it acknowledged): the
        # writer reconnects on the next batch. Only a lost lease (OwnershipLost) sets this.
        self.failed: asyncio.Future[BaseException] = loop.create_future()

    @classmethod
    async def start(cls, dsn: str, *, max_batch: int = 4096) -> Writer:
        writer = cls(dsn, asyncio.get_running_loop(), max_batch=max_batch)
        writer._thread.start()
        try:
            await writer._ready
        except BaseException:
            await asyncio.to_thread(writer._thread.join)
            raise
        return writer

    def submit(self, batch: Sequence[ops.WriteOp[Any]]) -> asyncio.Future[list[Any]]:
        fut: asyncio.Future[list[Any]] = self._loop.create_future()
        if self._closed:
            fut.set_exception(errors.StorageClosed("storage is closed; the write was not applied"))
        else:
            self._queue.put((batch, fut))
        return fut

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._queue.put(None)
        await asyncio.to_thread(self._thread.join)

    def fence(self, daemon_id: str, lease: float) -> None:
        """Check ``daemon_id``'s lease at the start of every later batch (see ``_FENCE``), and
        have the server end a transaction of ours left open for half a lease: a daemon stopped
        mid-batch (SIGSTOP) would otherwise hold its lease row locked, and the others' rescue
        with it, for as long as it stays stopped."""
        self._idle_ms = max(100, int(lease * 500))
        self._session_set = False
        self._fence_id = daemon_id

    def stats(self) -> WriterStats:
        return WriterStats(self._batches, self._requests, self._ops, self._failed,
                           self._replayed, self._largest, self._queue.qsize())

    # --- the thread ----------------------------------------------------------------------------

    def _main(self) -> None:
        loop = self._own_loop = asyncio.new_event_loop()
        try:
            try:
                self._connect()
            except BaseException as exc:
                self._loop.call_soon_threadsafe(_fail_ready, self._ready, translate(exc))
                return
            self._loop.call_soon_threadsafe(_set_ready, self._ready)
            self._loop_forever()
        finally:
            if self._conn is not None and not self._conn.raw.is_closed():
                try:
                    loop.run_until_complete(self._conn.raw.close(timeout=5))
                except Exception as exc:  # closing anyway
                    log.warning("storage writer: close failed: %s", exc)
            loop.close()

    def _connect(self) -> SyncConnection:
        assert self._own_loop is not None
        raw = self._own_loop.run_until_complete(
            asyncpg.connect(self._dsn, statement_cache_size=1024)
        )
        self._conn = SyncConnection(raw, self._own_loop)
        return self._conn

    def _loop_forever(self) -> None:
        q = self._queue
        stopping = False
        while not stopping:
            first = q.get()
            if first is None:
                break
            batch = [first]
            while len(batch) < self._max_batch:
                try:
                    item = q.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stopping = True
                    break
                batch.append(item)
            outcomes = self._run_batch(batch)
            try:
                self._loop.call_soon_threadsafe(_deliver, outcomes)
            except RuntimeError:
                log.warning("storage writer: event loop closed; %d callers not woken", len(batch))

    def _run_batch(self, batch: list[_Request]) -> list[_Outcome]:
        self._batches += 1
        self._requests += len(batch)
        self._largest = max(self._largest, len(batch))
        if self._fenced is not None:
            self._failed += 1
            return [(fut, False, self._fenced) for _, fut in batch]
        for _ in range(_DEADLOCK_RETRIES):
            outcomes = self._try_batch(batch)
            if outcomes is not None:
                return outcomes
            self._deadlocks += 1
        outcomes = self._try_batch(batch, last=True)
        assert outcomes is not None  # the last attempt reports its failure to the callers
        return outcomes

    def _try_batch(self, batch: list[_Request], *, last: bool = False) -> list[_Outcome] | None:
        """One attempt at ``batch``; None when the server chose it as a deadlock's (or a
        serialization failure's) victim and it may be tried again: it was rolled back whole,
        and two daemons' batches that take rows in different orders resolve on a retry."""
        began = time.perf_counter()
        try:
            conn = self._conn
            if conn is None or conn.raw.is_closed():
                conn = self._connect()
                self._session_set = self._idle_ms == 0
            if not self._session_set:
                conn.execute(f"SET idle_in_transaction_session_timeout = {self._idle_ms}")
                # Where a rescuer finds this session to end it once our lease ran out.
                conn.execute("UPDATE daemons SET backend_pid = pg_backend_pid() "
                             "WHERE daemon_id = ?", (self._fence_id,))
                self._session_set = True
            try:
                outcomes = self._apply(conn, batch, isolate=False)
            except _Replay:
                self._replayed += 1
                conn.execute("ROLLBACK")
                outcomes = self._apply(conn, batch, isolate=True)
            conn.execute("COMMIT")
        except errors.OwnershipLost as exc:
            self._failed += 1
            self._rollback()
            self._fenced = exc
            self._loop.call_soon_threadsafe(_set_failed, self.failed, exc)
            return [(fut, False, exc) for _, fut in batch]
        except Exception as exc:
            if not last and isinstance(exc, _RETRY_WHOLE):
                self._rollback()
                return None
            self._failed += 1
            if connection_unusable(exc) and self._conn is not None:
                self._conn.raw.terminate()  # the next batch connects afresh
            else:
                self._rollback()
            return [(fut, False, translate(exc)) for _, fut in batch]
        self._ops += sum(len(ops_) for ops_, _ in batch)
        self.commits.observe(len(batch), time.perf_counter() - began)
        return outcomes

    def _apply(self, conn: SyncConnection, batch: list[_Request], *, isolate: bool
               ) -> list[_Outcome]:
        """Apply the batch inside one open transaction (COMMIT is the caller's). Without
        ``isolate`` any op error raises ``_Replay``; with it, each caller gets a savepoint."""
        as_sqlite = cast(Any, conn)  # the op functions are typed for sqlite3; see dialect.py
        outcomes: list[_Outcome] = []
        pending = _Pending()
        conn.execute("BEGIN")
        foreign: set[str] = set()
        if self._fence_id is not None:
            foreign = self._check_fence(conn, self._fence_id, batch)
        # Before any op reads: what a concurrent batch of another daemon would race (locks.py).
        locks.lock(conn, (op for ops_, _ in batch for op in ops_))
        for ops_, fut in batch:
            if foreign and (run_id := _foreign_write(ops_, foreign)) is not None:
                outcomes.append((fut, False, errors.RunNotOwned(run_id)))
                continue
            if not isolate and all(_is_coalesced(op) for op in ops_):
                for op in ops_:
                    if type(op) is ops.UpdateRun:
                        if op.run_id in pending.updated:  # a second update: in order
                            self._flush(conn, pending)
                        pending.updates.append(op)
                        pending.updated.add(op.run_id)
                    else:
                        pending.steps.append(op)  # type: ignore[arg-type]  # a first attempt
                outcomes.append((fut, True, [None] * len(ops_)))
                continue
            if pending.must_flush_before(ops_):
                self._flush(conn, pending)
            if isolate:
                conn.execute("SAVEPOINT w")
            try:
                results = [_APPLY[type(op)](as_sqlite, op) for op in ops_]
            except Exception as exc:
                if is_batch_fatal(exc):
                    raise
                if not isolate:
                    raise _Replay from exc
                conn.execute("ROLLBACK TO SAVEPOINT w")
                conn.execute("RELEASE SAVEPOINT w")
                outcomes.append((fut, False, _op_error(exc)))
            else:
                if isolate:
                    conn.execute("RELEASE SAVEPOINT w")
                outcomes.append((fut, True, results))
        self._flush(conn, pending)
        return outcomes

    @staticmethod
    def _check_fence(conn: SyncConnection, me: str, batch: list[_Request]) -> set[str]:
        """Check our lease (else ``OwnershipLost``) and return the runs written in ``batch``
        that another daemon owns, in one round trip (a batch's fixed cost on PostgreSQL).

        FOR SHARE on our lease row: a rescuer deletes a dead daemon's row before it adopts the
        runs, and that DELETE waits for this batch; every later batch of the dead daemon then
        finds no row. No lock for the runs: a run owned by us changes hands only through our
        own transactions or, once our lease is gone, after a rescue the fence excludes; an
        unowned run is nobody's."""
        run_ids = sorted({str(cast(Any, op).run_id) for ops_, _ in batch for op in ops_
                          if type(op) in ops.RUN_WRITES})
        if not run_ids:
            if conn.execute(_FENCE, (me,)).fetchone() is None:
                raise errors.OwnershipLost(me)
            return set()
        live, foreign = conn.execute(_FENCE_AND_FOREIGN, (me, run_ids, me)).fetchone()
        if not live:
            raise errors.OwnershipLost(me)
        return set(foreign)

    @staticmethod
    def _flush(conn: SyncConnection, pending: _Pending) -> None:
        """Write the coalesced rows: set-based statements for many callers at once."""
        try:
            if pending.steps:
                mutations.record_first_attempts(cast(Any, conn), pending.steps)
            if pending.updates:
                mutations.update_runs(cast(Any, conn), pending.updates)
        except Exception as exc:
            if is_batch_fatal(exc):
                raise
            raise _Replay from exc  # whose row failed is unknown: replay, each in a savepoint
        pending.clear()

    def _rollback(self) -> None:
        conn = self._conn
        if conn is None or conn.raw.is_closed():
            return
        try:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
        except Exception as exc:
            log.error("storage writer: ROLLBACK failed, reconnecting: %s", exc)
            conn.raw.terminate()


def _foreign_write(batch: Sequence[ops.WriteOp[Any]], foreign: set[str]) -> str | None:
    for op in batch:
        run_id = cast(Any, op).run_id if type(op) in ops.RUN_WRITES else None
        if run_id in foreign:
            return str(run_id)
    return None


def _op_error(exc: Exception) -> BaseException:
    if isinstance(exc, KeyError) and exc.args and isinstance(exc.args[0], type):
        return errors.InvalidOperation(f"not a storage write op: {exc.args[0].__name__}")
    return translate(exc)


def _deliver(outcomes: list[_Outcome]) -> None:
    for fut, ok, value in outcomes:
        if fut.done():
            continue
        if ok:
            fut.set_result(value)
        else:
            fut.set_exception(value)


def _set_failed(fut: asyncio.Future[BaseException], exc: BaseException) -> None:
    if not fut.done():
        fut.set_result(exc)


def _set_ready(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def _fail_ready(fut: asyncio.Future[None], exc: BaseException) -> None:
    if not fut.done():
        fut.set_exception(exc)
