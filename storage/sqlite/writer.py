"""The group-commit writer: one thread, one ``sqlite3`` connection, one transaction per batch.

Callers on the event loop enqueue ``(ops, future)``. The writer thread blocks for the first
request, drains everything else already queued (up to ``max_batch``), and applies it in one
``BEGIN IMMEDIATE`` … ``COMMIT``: each caller's ops inside their own SAVEPOINT, so one caller's
constraint failure or conflict rolls back only its own ops. After COMMIT returns (the WAL is
fsynced at ``synchronous=full``) one ``call_soon_threadsafe`` per batch sets every caller's
future. If COMMIT fails, or an I/O-level error (disk full, I/O error, busy) hits any op, the
whole batch is rolled back and every caller in it gets the translated error: nothing is reported
committed that was not.

A caller whose await is cancelled after enqueueing may still see its ops committed; callers that
must know the outcome shield the await.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from storage import errors, ops
from storage.instruments import NO_INSTRUMENT, Instrument
from storage.sqlite import (
    admission,
    daemons,
    interventions,
    journal_edits,
    pragmas,
    retention,
    schedules,
    schema,
    timer_claims,
)
from storage.sqlite.mutations import APPLY, Apply, record_first_attempts
from storage.sqlite.search_index import write_backlog
from storage.sqlite.translate import is_batch_fatal, primary_code, translate
from storage.tally import CommitTally

log = logging.getLogger(__name__)

# (ops, future); None asks the thread to stop after what is queued before it.
_Request = tuple[Sequence[ops.WriteOp[Any]], "asyncio.Future[list[Any]]"]
_Outcome = tuple["asyncio.Future[list[Any]]", bool, Any]

IDLE_CHECKPOINT_SECONDS = 1.0
"""After this long with no writes, run a passive WAL checkpoint (bounded WAL, SPEC §4)."""
BUSY_CHECKPOINT_SECONDS = 1.0
WAL_CHECKPOINT_BYTES = 4 * 1024 * 1024
"""Under steady writes, checkpoint after a batch once the WAL file must grow past this size
(about SQLite's own 1000 pages), or at least every ``BUSY_CHECKPOINT_SECONDS``. SQLite's automatic
checkpoint is off (``wal_autocheckpoint = 0``): it runs inside COMMIT and ignores its own errors,
so an fsync EIO there would go unseen; ours reports it and stops the writer (fail-stop). Keeping
the WAL small also keeps commits cheap: writes that extend the file make each fsync dearer
than writes that reuse it."""


@dataclass(frozen=True, slots=True)
class SetMaxPageCount(ops.WriteOp[int]):
    """SQLite-only control op: change the writer's ``max_page_count`` (tests of disk full)."""

    pages: int


def _set_max_page_count(conn: sqlite3.Connection, op: SetMaxPageCount) -> int:
    return int(conn.execute(f"PRAGMA max_page_count = {int(op.pages)}").fetchone()[0])


_StepOp = ops.RecordStepAttempt


def _is_first_step_attempt(op: ops.WriteOp[Any]) -> bool:
    return type(op) is _StepOp and op.attempt == 1


class _CoalescedFailed(Exception):
    """A coalesced ``executemany`` of step rows failed on a non-I/O error."""


_SYNCHRONOUS_NAMES = {0: "off", 1: "normal", 2: "full", 3: "extra"}
_APPLY: dict[type[Any], Apply] = {
    **APPLY,
    **schedules.APPLY,
    **interventions.APPLY,
    **journal_edits.APPLY,
    **retention.APPLY,
    **daemons.APPLY,
    **admission.APPLY,
    ops.ClaimDueTimers: timer_claims.claim_due_timers,
    SetMaxPageCount: _set_max_page_count,
}
# Errors after which the file's durable content is unknown (SPEC §4: fail-stop). Not FULL or
# BUSY: the daemon keeps serving through those; nor the wal-index failing to grow on a full
# disk (SHMSIZE) or an allocation failure (NOMEM), which lose nothing written.
_IO_ERRORS = frozenset({sqlite3.SQLITE_IOERR, sqlite3.SQLITE_CORRUPT})
_NOT_IO_ERRORS = frozenset({sqlite3.SQLITE_IOERR_SHMSIZE, sqlite3.SQLITE_IOERR_NOMEM})


@dataclass(frozen=True, slots=True)
class WriterStats:
    """An immutable snapshot of the writer's counters."""

    batches: int
    requests: int
    ops: int
    failed_batches: int
    largest_batch: int
    queued: int
    synchronous: str  # as the writer connection reports it, not as configured
    journal_mode: str


class Writer:
    """Owns the writer thread. Create with ``await Writer.start(...)``; stop with ``close()``."""

    def __init__(
        self,
        path: Path,
        loop: asyncio.AbstractEventLoop,
        *,
        synchronous: pragmas.Synchronous,
        busy_timeout_ms: int,
        max_page_count: int | None,
        max_batch: int,
        instrument: Instrument = NO_INSTRUMENT,
    ) -> None:
        self._path = path
        self._instrument = instrument
        self._loop = loop
        self._synchronous = synchronous
        self._busy_timeout_ms = busy_timeout_ms
        self._max_page_count = max_page_count
        self._max_batch = max_batch
        self._queue: queue.SimpleQueue[_Request | None] = queue.SimpleQueue()
        self._conn: sqlite3.Connection | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._main, name=f"writer:{path.name}", daemon=True)
        self._ready: asyncio.Future[None] = loop.create_future()
        self._batches = 0
        self._requests = 0
        self._ops = 0
        self._failed_batches = 0
        self._largest_batch = 0
        self.commits = CommitTally.new()  # committed batches: size and time to COMMIT
        self._io_failure: sqlite3.Error | None = None  # set once: no write is applied after it
        self._effective = ("unknown", "unknown")  # (synchronous, journal_mode), read at open
        self.failed: asyncio.Future[BaseException] = loop.create_future()

    @classmethod
    async def start(
        cls,
        path: Path,
        *,
        synchronous: pragmas.Synchronous = "full",
        busy_timeout_ms: int = 5000,
        max_page_count: int | None = None,
        max_batch: int = 4096,
        instrument: Instrument = NO_INSTRUMENT,
    ) -> Writer:
        """Start the thread: it opens the connection, sets pragmas and migrates the schema.
        Raises ``SchemaTooNew`` or another ``StorageError`` if that fails."""
        writer = cls(
            path,
            asyncio.get_running_loop(),
            synchronous=synchronous,
            busy_timeout_ms=busy_timeout_ms,
            max_page_count=max_page_count,
            max_batch=max_batch,
            instrument=instrument,
        )
        writer._thread.start()
        try:
            await writer._ready
        except BaseException:
            await asyncio.to_thread(writer._thread.join)
            raise
        return writer

    def submit(self, batch: Sequence[ops.WriteOp[Any]]) -> asyncio.Future[list[Any]]:
        """Enqueue ``batch``; the future resolves once its transaction committed."""
        fut: asyncio.Future[list[Any]] = self._loop.create_future()
        if self._closed:
            fut.set_exception(errors.StorageClosed("storage is closed; the write was not applied"))
        else:
            self._queue.put((batch, fut))
        return fut

    async def close(self) -> None:
        """Finish everything queued, close the connection, join the thread."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(None)
        await asyncio.to_thread(self._thread.join)

    def stats(self) -> WriterStats:
        return WriterStats(
            batches=self._batches,
            requests=self._requests,
            ops=self._ops,
            failed_batches=self._failed_batches,
            largest_batch=self._largest_batch,
            queued=self._queue.qsize(),
            synchronous=self._effective[0],
            journal_mode=self._effective[1],
        )

    # --- the thread ----------------------------------------------------------------------------

    def _main(self) -> None:
        try:
            self._conn = self._open()
        except BaseException as exc:  # reported to start(); the thread then ends
            self._loop.call_soon_threadsafe(_fail_ready, self._ready, translate(exc))
            return
        self._loop.call_soon_threadsafe(_set_ready, self._ready)
        try:
            self._loop_forever(self._conn)
        finally:
            self._conn.close()

    def _open(self) -> sqlite3.Connection:
        if not self._path.exists():
            pragmas.create_private(self._path)
        conn = sqlite3.connect(
            self._path, isolation_level=None, cached_statements=512, check_same_thread=True
        )
        try:
            pragmas.apply_pragmas(
                conn,
                synchronous=self._synchronous,
                busy_timeout_ms=self._busy_timeout_ms,
                max_page_count=self._max_page_count,
                writer=True,
            )
            schema.migrate(conn, str(self._path), instrument=self._instrument)
            pragmas.restrict_companions(self._path)
            # Read back what is in force: the durability promise rests on it (SPEC §10).
            level = conn.execute("PRAGMA synchronous").fetchone()[0]
            self._effective = (
                _SYNCHRONOUS_NAMES.get(level, str(level)),
                str(conn.execute("PRAGMA journal_mode").fetchone()[0]),
            )
        except BaseException:
            conn.close()
            raise
        return conn

    def _loop_forever(self, conn: sqlite3.Connection) -> None:
        q = self._queue
        dirty = False
        stopping = False
        last_checkpoint = time.monotonic()
        wal = f"{self._path}-wal"
        wal_high = 0  # the WAL file's largest size seen: it grows only when writes outrun reuse
        while not stopping:
            try:
                first = q.get(timeout=IDLE_CHECKPOINT_SECONDS if dirty else None)
            except queue.Empty:
                self._checkpoint(conn)
                dirty = False
                last_checkpoint = time.monotonic()
                continue
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
            outcomes = self._run_batch(conn, batch)
            self._instrument.reached("batch.committed")
            dirty = True
            try:
                self._loop.call_soon_threadsafe(_deliver, outcomes)
            except RuntimeError:  # the loop is closed: nobody is left to wake
                log.warning("storage writer: event loop closed; %d callers not woken", len(batch))
            wal_size = _file_size(wal)
            grew = wal_size > wal_high and wal_size >= WAL_CHECKPOINT_BYTES
            wal_high = max(wal_high, wal_size)
            if grew or time.monotonic() - last_checkpoint >= BUSY_CHECKPOINT_SECONDS:
                # After the callers were woken: they do not wait for it.
                self._checkpoint(conn)
                last_checkpoint = time.monotonic()
        self._checkpoint(conn)

    def _run_batch(self, conn: sqlite3.Connection, batch: list[_Request]) -> list[_Outcome]:
        if self._io_failure is not None:
            return [(fut, False, self._refusal()) for _, fut in batch]
        self._instrument.reached("batch.begun")
        self._batches += 1
        self._requests += len(batch)
        self._largest_batch = max(self._largest_batch, len(batch))
        began = time.perf_counter()
        try:
            try:
                outcomes = self._apply(conn, batch, coalesce=True)
            except _CoalescedFailed:
                # A coalesced step row failed and we cannot tell whose it was: start over with
                # every caller in its own savepoint, so only the guilty caller fails.
                self._rollback(conn)
                outcomes = self._apply(conn, batch, coalesce=False)
            # In the batch's transaction: the index is as current as the rows it commits.
            write_backlog(conn)
            self._instrument.reached("batch.executed")
            conn.execute("COMMIT")
        except Exception as exc:
            self._failed_batches += 1
            self._rollback(conn)
            self._stop_on_io_error(exc)
            return [(fut, False, translate(exc)) for _, fut in batch]
        self._ops += sum(len(ops_) for ops_, _ in batch)
        self.commits.observe(len(batch), time.perf_counter() - began)
        return outcomes

    def _apply(
        self, conn: sqlite3.Connection, batch: list[_Request], *, coalesce: bool
    ) -> list[_Outcome]:
        """Apply the batch inside one open transaction (COMMIT is the caller's).

        Each caller's ops run in a SAVEPOINT, except that with ``coalesce`` callers whose ops
        are all first attempts of steps are written with a few multi-row upserts: the hot path,
        about ten statements per batch instead of three per caller.
        """
        execute = conn.execute
        apply = _APPLY
        outcomes: list[_Outcome] = []
        steps: list[ops.RecordStepAttempt] = []
        execute("BEGIN IMMEDIATE")
        self._instrument.reached("batch.begun")
        for ops_, fut in batch:
            if coalesce and all(_is_first_step_attempt(op) for op in ops_):
                steps.extend(ops_)  # type: ignore[arg-type]  # checked: all step attempts
                outcomes.append((fut, True, [None] * len(ops_)))
                continue
            # Coalesced first attempts only touch their own new step rows: they need writing
            # before a caller that records a later attempt (it archives the earlier one),
            # not before every other caller, or mixed batches fragment into small statements.
            if steps and any(
                type(op) is ops.RecordStepAttempt and op.attempt > 1 for op in ops_
            ):
                self._flush_steps(conn, steps)
            execute("SAVEPOINT w")
            try:
                results = [apply[type(op)](conn, op) for op in ops_]
            except Exception as exc:
                if is_batch_fatal(exc) or not conn.in_transaction:
                    raise
                execute("ROLLBACK TO w")
                execute("RELEASE w")
                outcomes.append((fut, False, _op_error(exc)))
            else:
                execute("RELEASE w")
                outcomes.append((fut, True, results))
        if steps:
            self._flush_steps(conn, steps)
        return outcomes

    @staticmethod
    def _flush_steps(conn: sqlite3.Connection, steps: list[ops.RecordStepAttempt]) -> None:
        try:
            record_first_attempts(conn, steps)
        except Exception as exc:
            if is_batch_fatal(exc) or not conn.in_transaction:
                raise
            raise _CoalescedFailed from exc
        steps.clear()

    @staticmethod
    def _rollback(conn: sqlite3.Connection) -> None:
        if not conn.in_transaction:
            return  # SQLite already rolled back (e.g. after SQLITE_FULL)
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error as exc:
            # The batch's own error is what callers get; this one only explains a stuck state.
            log.error("storage writer: ROLLBACK failed: %s", exc)

    def _checkpoint(self, conn: sqlite3.Connection) -> None:
        if self._io_failure is not None:
            return
        try:
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except sqlite3.Error as exc:
            log.warning("storage writer: idle checkpoint failed: %s", exc)
            self._stop_on_io_error(exc)

    def _stop_on_io_error(self, exc: BaseException) -> None:
        """After an I/O error (e.g. fsync EIO) the kernel may have dropped written pages while
        later fsyncs succeed: nothing written afterwards may be acknowledged. Refuse every later
        write, so the daemon fails stop on its next write and recovery reads only the disk."""
        if not isinstance(exc, sqlite3.Error) or primary_code(exc) not in _IO_ERRORS:
            return
        if getattr(exc, "sqlite_errorcode", None) in _NOT_IO_ERRORS:
            return
        if not self._instrument.fail_stop(exc):
            return
        self._io_failure = exc
        log.critical("storage writer: I/O error, refusing all further writes: %s", exc)
        # Tell the owner at once, also when the error came from an idle checkpoint with no
        # caller to receive it: an idle daemon must stop too.
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody left to tell
            self._loop.call_soon_threadsafe(_set_failed, self.failed, translate(exc))

    def _refusal(self) -> errors.StorageError:
        return errors.StorageError(
            f"storage stopped after an I/O error ({self._io_failure}); restart to recover",
            data={"sqlite": getattr(self._io_failure, "sqlite_errorname", "SQLITE_IOERR")},
        )


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


def _set_ready(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def _file_size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return 0


def _set_failed(fut: asyncio.Future[BaseException], exc: BaseException) -> None:
    if not fut.done():
        fut.set_result(exc)


def _fail_ready(fut: asyncio.Future[None], exc: BaseException) -> None:
    if not fut.done():
        fut.set_exception(exc)
