"""The ``Storage`` Protocol: everything the daemon asks of its database.

Methods are named for what they do to engine state. Writes go through ``commit`` (a batch of
ops from ``storage.ops``, applied atomically) or a single-op shortcut; reads return records from
``storage.records``. No backend type (connection, row, SQL) appears here, so a PostgreSQL store
can implement the same Protocol.

Errors: every method may raise ``StorageError`` (``StorageFull`` when the disk is full,
``StorageBusy`` when the database stays locked, ``StorageClosed`` after close). Op-specific errors
(``NotFound``, ``TokenConflict``, ``InvalidOperation``) are listed on each op in ``storage.ops``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar, runtime_checkable

from storage import ops, records

R = TypeVar("R")

# The shortest ``list_runs(search=)`` text: the trigram index matches 3-character sequences.
SEARCH_MIN_CHARS = 3


@runtime_checkable
class Storage(Protocol):
    @property
    def failed(self) -> asyncio.Future[BaseException]:
        """Resolves with the error once an I/O error (a failed fsync, a corrupt page) has made
        the file's durable content unknown: every later write is refused, and the owner must
        stop (SPEC §4: fail-stop) so that recovery reads only what is on disk."""
        ...

    def durability(self) -> dict[str, str]:
        """The durability settings in force as the database itself reports them (for SQLite:
        ``synchronous`` and ``journal_mode`` of the writer connection), not as configured."""
        ...

    def capabilities(self) -> records.StorageCapabilities:
        """Which backend this is and what it can do where backends differ."""
        ...

    # --- writes --------------------------------------------------------------------------------

    def fence(self, daemon_id: str, lease: float) -> None:
        """From now on every commit first checks, in its own transaction, that daemon
        ``daemon_id`` (registered with ``RegisterDaemon``) still holds a live lease by the
        database clock; if not, the batch and every later one fail with ``OwnershipLost`` and
        ``failed`` resolves with it (SPEC §13 fencing). The backend also makes sure that a
        transaction of this daemon left open (the process stopped mid-batch) ends within
        ``lease``/2, so it cannot hold up the daemons that adopt its runs. A no-op where one
        daemon owns the database (SQLite: the lock file)."""
        ...

    async def commit(self, batch: Sequence[ops.WriteOp[Any]]) -> list[Any]:
        """Apply every op of ``batch`` in order in one transaction, or none of them.

        Returns one result per op, in batch order (each op's ``WriteOp[R]`` says its type).
        Returns only after the transaction is durable (at ``synchronous=full``: fsynced); batches
        from concurrent callers share a transaction (group commit) but fail independently: an op
        error (``NotFound``, ``TokenConflict``, ``InvalidOperation``, a constraint) rolls back
        only this caller's batch. ``StorageFull`` / I/O errors fail every batch committed with it.
        """
        ...

    async def execute(self, op: ops.WriteOp[R]) -> R:
        """``commit([op])`` and return its one result."""
        ...

    async def create_run(self, run: ops.CreateRun) -> ops.RunCreated:
        """Insert the run, or return the one stored under the same ``run_id`` or the same
        ``(workflow_id, idempotency_key)``; ``created`` is True only when a row was inserted."""
        ...

    async def record_event(self, event: ops.RecordEvent) -> ops.EventRecorded:
        """Store the event and, atomically, resolve every matching waiting EVENT waitpoint
        (oldest registration first). A re-sent ``event_id`` is a no-op (``inserted`` False)."""
        ...

    async def send_signal(self, signal: ops.SendSignal) -> ops.SignalSent:
        """Resolve the run's oldest waitpoint waiting on the signal, else add it to the inbox.
        Unknown run → ``NotFound``."""
        ...

    async def complete_token(self, completion: ops.CompleteToken) -> records.WaitpointRecord:
        """Resolve the token's waitpoint and return it. Unknown token → ``NotFound``; already
        completed (or timed out) → ``TokenConflict``."""
        ...

    async def claim_due_timers(self, before: float, limit: int = 1000) -> list[ops.FiredTimer]:
        """Atomically delete up to ``limit`` timers due at ``before`` (oldest first) and resolve
        the waitpoints they target. A timer is claimed by exactly one call."""
        ...

    # --- runs ------------------------------------------------------------------------------------

    async def get_run(self, run_id: str) -> records.RunRecord | None:
        """The run, or None if unknown."""
        ...

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
        """Runs matching every given filter (``since <= created_at < until``), newest first
        (by ``created_at``, then number); ``limit`` None: all of them. ``search``: runs whose id,
        workflow id, input, output, error, tags or metadata contain the text (case-insensitive
        substring, at least 3 characters; ``ValueError`` if shorter)."""
        ...

    async def count_prunable(
        self,
        statuses: tuple[records.RunStatus, ...],
        before: float,
        workflow_id: str | None = None,
    ) -> int:
        """How many runs ``PruneRuns(statuses, before, workflow_id)`` would delete in all
        (roots and their descendants): the dry run of ``prune``."""
        ...

    async def paused_workflows(self) -> list[str]:
        """The ids of the paused workflows (``pause {workflow_id}``), sorted."""
        ...

    async def run_archives(self, run_id: str) -> list[records.ArchiveRecord]:
        """What each ``retry`` of the run set aside, oldest first (empty if never retried)."""
        ...

    async def non_terminal_runs(self) -> list[records.RunRecord]:
        """Every run not yet in a terminal status (recovery at start), oldest first."""
        ...

    async def list_daemons(self) -> list[records.DaemonRecord]:
        """Every registered daemon, oldest first, with ``live`` judged by the database clock
        (SPEC §13 ``wf daemons``)."""
        ...

    async def listen_for_runs(
        self,
        daemon_id: str,
        on_wake: Callable[[str | None], None],
        on_states: Callable[[Sequence[records.StatusChange]], None],
        on_chunks: Callable[[Sequence[records.StreamNotice]], None] | None = None,
        on_followed: Callable[[Sequence[records.StreamNotice]], None] | None = None,
    ) -> None:
        """Until cancelled, call ``on_wake(run_id)`` when another daemon changed a run
        ``daemon_id`` owns (resolved, cancelled, paused, resumed), ``on_states(changes)`` when
        other daemons announced status changes (``announce_states``), ``on_chunks(written)``
        and ``on_followed(followed)`` when they announced stream chunks or followers
        (``announce_chunks``, ``announce_followed``), and ``on_wake(None)`` when
        such news may have been missed (after each (re)connection): look at every owned run.
        Returns at once where no other daemon can write (SQLite: one daemon per file)."""
        ...

    async def announce_states(
        self, daemon_id: str, changes: Sequence[records.StatusChange]
    ) -> None:
        """Tell every other daemon listening (``listen_for_runs``) of status changes
        ``daemon_id`` committed. A hint, never raised: a loss is covered by the listeners'
        polls. Nothing where one daemon is alone on the storage."""
        ...

    async def announce_chunks(
        self, daemon_id: str, written: Sequence[records.StreamNotice]
    ) -> None:
        """Tell every other daemon listening (``listen_for_runs``) which streams got chunks
        ``daemon_id`` committed. A hint, as ``announce_states``: never raised, a loss is
        covered by the followers' polls, nothing where one daemon is alone on the storage."""
        ...

    async def announce_followed(
        self, daemon_id: str, followed: Sequence[records.StreamNotice]
    ) -> None:
        """Tell every other daemon listening that ``daemon_id`` follows these streams (so the
        one writing them announces their chunks). A hint, as ``announce_chunks``."""
        ...

    async def owned_runs_to_move(self, daemon_id: str) -> list[str]:
        """Runs ``daemon_id`` owns that another daemon moved: waiting with a resolution
        recorded (``needs_resume``), or with a cancel requested (SPEC §13: the owner's poll
        when a wakeup went to another daemon)."""
        ...

    async def owned_runs(self, daemon_id: str) -> list[str]:
        """The runs not ended that ``daemon_id`` owns in storage, whether or not it knows it
        (a claim whose reply was lost with the connection committed them to it)."""
        ...

    async def paused_runs(self, daemon_id: str, among: Sequence[str] = ()) -> list[str]:
        """The runs not ended and paused (the flag or the status) that ``daemon_id`` owns or
        that are in ``among``: the owner's poll compares them with the pauses it holds in
        memory, to mirror a pause or a resume made through another daemon (SPEC §13)."""
        ...

    async def throttle_starts(self, since: float) -> list[tuple[str, float]]:
        """``(throttle_key, started_at)`` of every run with a throttle key that started at or
        after ``since``, oldest start first (the throttle windows, rebuilt at start)."""
        ...

    async def concurrency_groups(
        self, at: float, groups: Sequence[ops.GroupKey] | None = None
    ) -> list[records.GroupState]:
        """Concurrency groups as admission in the database counts them (``AdmitRuns``, many
        daemons): each group's holders, whichever daemon drives them, and its queued runs due
        at ``at``. ``groups``: those groups, each reported even when empty, in the order
        given; None: every group with a holder or a queued run, by group. Read-only; rows of
        ended runs count for nothing. With one daemon admission keeps no rows: empty groups."""
        ...

    async def pending_batches(
        self, workflow_id: str | None = None, batch_key: str | None = None
    ) -> list[records.PendingBatch]:
        """Events waiting for batch triggers' runs, per ``(workflow_id, batch_key)`` (only that
        one when both are given), each oldest first."""
        ...

    async def load_journal(self, run_id: str) -> records.Journal:
        """The run and everything recorded for it, from one consistent snapshot: steps and their
        attempts (by position, attempt), waitpoints (registration order), compensations (in the
        order recorded), metadata, stream chunks (by stream, seq). Unknown run → ``NotFound``."""
        ...

    # --- waitpoints, events, signals, tokens ---------------------------------------------------

    async def get_waitpoint(self, run_id: str, wp_id: str) -> records.WaitpointRecord | None:
        """One waitpoint, or None."""
        ...

    async def waiting_waitpoints_for_event(self, event_type: str) -> list[records.WaitpointRecord]:
        """Every waiting EVENT waitpoint for ``event_type``, oldest registration first."""
        ...

    async def get_event(self, event_id: str) -> records.EventRecord | None:
        """A stored event, or None."""
        ...

    async def recent_events(
        self, *, type: str | None = None, before: float | None = None, limit: int = 50
    ) -> list[records.EventRecord]:
        """Stored events, newest first: of ``type`` if given, received before ``before`` if
        given (the next page), at most ``limit``."""
        ...

    async def event_resolutions(
        self, event_ids: Sequence[str]
    ) -> dict[str, list[tuple[str, str]]]:
        """``event_id -> [(run_id, wp_id), ...]``: the waitpoints each event resolved."""
        ...

    async def existing_runs(self, run_ids: Sequence[str]) -> set[str]:
        """The ids among ``run_ids`` that name a stored run."""
        ...

    async def signal_inbox(
        self, run_id: str, name: str | None = None
    ) -> list[records.SignalRecord]:
        """Signals buffered for the run (optionally of one name), oldest first."""
        ...

    async def get_token(self, token_id: str) -> records.TokenRecord | None:
        """A token and whether it was completed, or None."""
        ...

    # --- timers, streams, schedules, rate limits, stats ------------------------------------------

    async def next_timer_due(self) -> float | None:
        """The earliest timer due time, or None when no timer is stored."""
        ...

    async def waiting_by_kind(self) -> dict[str, int]:
        """How many waitpoints are waiting, by kind (a partial index: no table scan)."""
        ...

    async def due_timers(self, before: float, limit: int) -> list[records.TimerRecord]:
        """Up to ``limit`` timers with ``due_at <= before``, oldest first (ties by timer id)."""
        ...

    async def stream_chunks(
        self, run_id: str, stream_id: str, after_seq: int = -1, limit: int | None = None
    ) -> list[records.StreamChunk]:
        """Chunks of one stream with ``seq > after_seq``, by seq."""
        ...

    async def list_schedules(self) -> list[records.ScheduleRecord]:
        """Every schedule, by name."""
        ...

    async def get_schedule(self, name: str) -> records.ScheduleRecord | None:
        """One schedule, or None."""
        ...

    async def get_rate_limit(self, key: str) -> records.RateLimitState | None:
        """The stored token-bucket state for ``key``, or None."""
        ...

    async def counts(self) -> records.StorageCounts:
        """Row counts for ``wf stats`` (one consistent snapshot)."""
        ...
