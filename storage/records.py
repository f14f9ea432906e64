"""Records read from storage: frozen, slotted, JSON-ready (``RunRecord``, built and copied on
every run's path, is frozen for the type checker only: ``frozen_by_type``).

Times are float epoch seconds (UTC) everywhere. JSON values (inputs, outputs, payloads, errors,
metadata) are already-decoded Python objects. No driver type ever appears here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, TypeVar, dataclass_transform

JSON = Any
"""An already-decoded JSON value: None, bool, int, float, str, list or dict with str keys."""

Matcher = Callable[[JSON, JSON], bool]
"""``matches(match, payload)``: does an event payload satisfy a waitpoint's stored ``match``?
Supplied by the caller so storage holds no workflow semantics. Runs on the writer thread: it
must be pure, fast and thread-safe."""

C = TypeVar("C")


@dataclass_transform(frozen_default=True)
def frozen_by_type(cls: type[C]) -> type[C]:
    """A slotted dataclass that mypy treats as frozen (assigning a field is a type error, and
    the strict type check is a gate) but that is not checked at run time: ``frozen=True``
    sets every field through ``object.__setattr__``, ~1.3k instructions per field on CPython
    3.11. Used for what every run or every step builds: ``RunRecord`` (34 fields, built at
    submit and copied at each status change), the ops ``CreateRun``, ``UpdateRun`` and
    ``RecordStepAttempt`` (docs/decisions.md, issue 21)."""
    return dataclass(slots=True, unsafe_hash=True)(cls)


class RunStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    WAITING = "waiting"
    PAUSED = "paused"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    COMPENSATED = "compensated"
    COMPENSATION_FAILED = "compensation_failed"
    TIMED_OUT = "timed_out"


TERMINAL_STATUSES: frozenset[RunStatus] = frozenset(
    {
        RunStatus.COMPLETED,
        RunStatus.FAILED,
        RunStatus.CANCELLED,
        RunStatus.COMPENSATED,
        RunStatus.COMPENSATION_FAILED,
        RunStatus.TIMED_OUT,
    }
)
NON_TERMINAL_STATUSES: frozenset[RunStatus] = frozenset(RunStatus) - TERMINAL_STATUSES


class StepStatus(StrEnum):
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"


class WaitpointKind(StrEnum):
    DATETIME = "DATETIME"
    EVENT = "EVENT"
    SIGNAL = "SIGNAL"
    MANUAL = "MANUAL"
    RUN = "RUN"


class WaitpointStatus(StrEnum):
    WAITING = "waiting"
    RESOLVED = "resolved"
    CANCELLED = "cancelled"
    """The run ended while it waited: nothing resolves it any more."""


class ResolutionSource(StrEnum):
    """How a waitpoint was resolved (SPEC §3).

    ``live``: by a signal, event, token, child run or sleep timer arriving while it waited;
    ``inbox``: at registration, from something stored earlier (a buffered signal, or an event
    accepted by ``lookback``); ``timeout``: by its timeout timer; ``replay``: reserved for the
    executor, which reports journal entries it replays with this source.
    """

    LIVE = "live"
    INBOX = "inbox"
    REPLAY = "replay"
    TIMEOUT = "timeout"


class TimerKind(StrEnum):
    SLEEP = "sleep"
    TIMEOUT = "timeout"
    RETRY = "retry"
    START = "start"
    EXPIRE = "expire"
    BATCH = "batch"
    SCHEDULE = "schedule"


class MetadataOpKind(StrEnum):
    SET = "set"
    INCREMENT = "increment"
    APPEND = "append"
    REMOVE = "remove"


class CompensationStatus(StrEnum):
    COMPLETED = "completed"
    FAILED = "failed"


@frozen_by_type
class RunRecord:
    run_id: str
    number: int
    workflow_id: str
    workflow_version: str | None
    status: RunStatus
    input: JSON
    output: JSON
    error: JSON
    tags: tuple[str, ...]
    priority: int
    idempotency_key: str | None
    parent_run_id: str | None
    root_run_id: str | None
    triggered_by: str | None
    attempt: int
    created_at: float
    scheduled_at: float | None
    started_at: float | None
    finished_at: float | None
    updated_at: float
    diverged: bool
    recoveries: int
    compute_seconds: float
    parent_wp_id: str | None = None
    needs_resume: bool = False
    flow: JSON = None
    """Flow control decided at submit: ``{"groups": [[scope, key], ...], "throttle": key,
    "debounce": key}`` (keys already resolved), or None."""
    throttle_key: str | None = None
    expires_at: float | None = None
    cancel_requested: JSON = None
    """The first acknowledged cancel not yet carried out: ``{"reason", "compensate", "code",
    "at"}``, or None. Honoured by the actor that next drives the run, and by recovery."""
    paused: bool = False
    """``pause {run_id}`` is in force: a pending run is not started, a running one is held
    before its next step, a parked one is ``paused``."""
    version_pinned: bool = False
    """The run resumes only on its ``workflow_version`` (an explicit ``version=``)."""
    traceparent: str | None = None
    """The W3C trace context the run was submitted with (a child: its parent's wait span)."""
    forked_from: JSON = None
    """``{"run_id", "from_step", "reason", "at"}`` when the run is a fork (SPEC §14), else None."""
    admitted_at: float | None = None
    """Many daemons: when admission let this pending run start (it holds its concurrency slots
    from then on, and it is its throttle start); None otherwise and with one daemon."""

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES


@dataclass(frozen=True, slots=True)
class StepRecord:
    """The latest attempt of one step (by step id)."""

    run_id: str
    step_id: str
    position: int
    attempt: int
    status: StepStatus
    output: JSON
    error: JSON
    started_at: float | None
    finished_at: float | None
    runtime: str | None
    retry_at: float | None = None
    journal_seq: int | None = None
    """The entry's run-wide sequence number (SPEC §3); None where the backend has none."""


@dataclass(frozen=True, slots=True)
class StepAttemptRecord:
    """One attempt of a step; every attempt, failed ones included, is kept."""

    run_id: str
    step_id: str
    attempt: int
    status: StepStatus
    output: JSON
    error: JSON
    started_at: float | None
    finished_at: float | None
    retry_at: float | None = None
    journal_seq: int | None = None
    """The entry's run-wide sequence number (SPEC §3); None where the backend has none."""


@dataclass(frozen=True, slots=True)
class WaitpointRecord:
    run_id: str
    wp_id: str
    kind: WaitpointKind
    status: WaitpointStatus
    meta: JSON
    event_type: str | None
    signal_name: str | None
    match: JSON
    token_id: str | None
    registered_at: float
    due_at: float | None
    timeout_at: float | None
    resolved_at: float | None
    payload: JSON
    error: JSON
    source: ResolutionSource | None
    matched_event_id: str | None
    journal_seq: int | None = None
    """The entry's run-wide sequence number (SPEC §3); None where the backend has none."""
    resolved_journal_seq: int | None = None

    @property
    def is_waiting(self) -> bool:
        return self.status is WaitpointStatus.WAITING


@dataclass(frozen=True, slots=True)
class EventRecord:
    event_id: str
    type: str
    payload: JSON
    received_at: float


@dataclass(frozen=True, slots=True)
class SignalRecord:
    """A signal held in a run's inbox (sent while no waitpoint waited for it)."""

    seq: int
    run_id: str
    name: str
    payload: JSON
    sent_at: float


@dataclass(frozen=True, slots=True)
class TokenRecord:
    token_id: str
    run_id: str
    wp_id: str
    created_at: float
    completed: bool


@dataclass(frozen=True, slots=True)
class TimerRecord:
    timer_id: str
    kind: TimerKind
    due_at: float
    run_id: str | None
    wp_id: str | None
    payload: JSON
    created_at: float


class ScheduleSource(StrEnum):
    CODE = "code"
    """Declared with ``@workflow(schedule=...)``: reconciled with the code at start."""
    API = "api"
    """Created with ``schedule_create``: kept until ``schedule_delete``."""


@dataclass(frozen=True, slots=True)
class ScheduleRecord:
    name: str
    workflow_id: str
    spec: JSON
    """The rule, time zone, input, overlap and jitter, as ``runtime.schedules`` stores them."""
    next_fire_at: float | None
    """When the next fire happens (its due time plus jitter); its timer is due then."""
    last_fire_at: float | None
    """The due time of the last fire (the time in its run id)."""
    updated_at: float
    source: ScheduleSource = ScheduleSource.API
    paused: bool = False
    next_due_at: float | None = None
    """The next due time (the time in the next run's id); None: it fires no more."""
    last_run_id: str | None = None
    fired: int = 0
    skipped: int = 0
    """Fires the overlap policy dropped."""
    missed: int = 0
    """Due times that passed while no daemon ran, collapsed into the fire after them."""
    created_at: float | None = None


@dataclass(frozen=True, slots=True)
class BatchedEvent:
    event_id: str
    payload: JSON
    received_at: float


@dataclass(frozen=True, slots=True)
class PendingBatch:
    """Events waiting for a batch trigger's run, oldest first."""

    workflow_id: str
    batch_key: str
    events: tuple[BatchedEvent, ...]


@dataclass(frozen=True, slots=True)
class StreamChunk:
    run_id: str
    stream_id: str
    seq: int
    encoding: str
    chunk: JSON
    final: bool
    at: float
    journal_seq: int | None = None
    """The entry's run-wide sequence number (SPEC §3); None where the backend has none."""


@dataclass(frozen=True, slots=True)
class CompensationRecord:
    run_id: str
    step_id: str
    status: CompensationStatus
    error: JSON
    finished_at: float
    journal_seq: int | None = None
    """The entry's run-wide sequence number (SPEC §3); None where the backend has none."""


@dataclass(frozen=True, slots=True)
class RateLimitState:
    key: str
    tokens: float
    updated_at: float


@dataclass(frozen=True, slots=True)
class ArchiveRecord:
    """What one ``retry`` of a run set aside: the run's end before it, and the journal entries
    the retry took out (``journal``: ``{"steps", "waitpoints", "compensations", ...}``)."""

    run_id: str
    seq: int
    attempt: int
    mode: str
    archived_at: float
    status: RunStatus
    output: JSON
    error: JSON
    started_at: float | None
    finished_at: float | None
    journal: JSON


@dataclass(frozen=True, slots=True)
class StatusChange:
    """A committed status change of a run, as one daemon tells the others (SPEC §13: ``wait``,
    ``watch`` and ``changes`` on a daemon that does not drive the run)."""

    run_id: str
    status: str
    workflow_id: str | None = None


@dataclass(frozen=True, slots=True)
class GroupState:
    """A concurrency group as admission in the database counts it (many daemons, SPEC §2a,
    §13): the runs holding its slots, whichever daemon drives them, and how many due runs are
    queued on it."""

    group: tuple[str, str | None]
    """``(scope, key)``; key None for an unkeyed limit."""
    holders: tuple[str, ...]
    """Run ids, oldest first: running, waiting, paused, or pending and admitted."""
    queued: int
    """Pending runs queued on it that are due, not paused and not expired."""


@dataclass(frozen=True, slots=True)
class StreamNotice:
    """A run's stream, as daemons tell each other of it (SPEC §13, ``stream --follow`` on a
    daemon that does not drive the run): "I follow it" one way, "it got chunks" the other."""

    run_id: str
    stream_id: str


@dataclass(frozen=True, slots=True)
class AmendmentRecord:
    """One ``amend`` of a step's recorded result (append-only audit trail)."""

    run_id: str
    seq: int
    step_id: str
    at: float
    peer_uid: int | None
    """The uid of the socket peer that asked (SO_PEERCRED); None when not over the socket."""
    reason: str
    old: JSON
    """``{"status", "attempt", "output", "error"}`` of the step before."""
    new: JSON
    """``{"status", "output"}`` after."""


@dataclass(frozen=True, slots=True)
class Journal:
    """Everything recorded for one run, read in one consistent snapshot."""

    run: RunRecord
    steps: tuple[StepRecord, ...]
    attempts: tuple[StepAttemptRecord, ...]
    waitpoints: tuple[WaitpointRecord, ...]
    compensations: tuple[CompensationRecord, ...]
    metadata: Mapping[str, JSON]
    stream_chunks: tuple[StreamChunk, ...]
    completed_streams: frozenset[str]
    metadata_ops: int = 0
    """How many metadata ops this run has emitted and storage applied (highest index + 1)."""
    amendments: tuple[AmendmentRecord, ...] = ()
    """Every ``amend`` of the run's steps, oldest first."""
    reopened_steps: frozenset[str] = frozenset()
    """Steps a ``retry --mode resume`` undid (their compensation ran): they run again wherever
    the body reaches them, even before later recorded entries (no divergence)."""

    @property
    def entry_count(self) -> int:
        """Journal entries counted against ``limits.max_journal_entries``."""
        return len(self.attempts) + len(self.waitpoints) + len(self.stream_chunks)


@dataclass(frozen=True, slots=True)
class DaemonRecord:
    """A daemon registered in the database (SPEC §13 ``wf daemons``). Times are the database
    clock's epoch seconds; ``live`` and ``now`` were judged by that clock when read."""

    daemon_id: str
    name: str
    host: str
    pid: int
    version: str
    socket: str
    http: str
    started_at: float
    renewed_at: float
    lease_until: float
    live: bool
    runs: int  # runs it owns (always 0 on SQLite, where nobody owns runs)
    now: float


@dataclass(frozen=True, slots=True)
class StorageCapabilities:
    """What a backend can do, where backends differ: the orchestrator asks this instead of
    looking at the backend's type."""

    backend: str  # "sqlite" or "postgres"
    version: str  # the database engine's version
    location: str  # the file path, or the URL without its password
    many_daemons: bool  # several daemons may share it (SPEC §13; PostgreSQL in phase 2)
    # The local file holding the database (size gauges), None when it lives on a server.
    file: str | None = None
    # Commits are fenced by the daemon's lease (``Storage.fence``): a lost lease is terminal.
    fenced: bool = False


@dataclass(frozen=True, slots=True)
class StorageCounts:
    """Row counts for ``wf stats``."""

    runs_by_status: Mapping[str, int] = field(default_factory=dict)
    waiting_waitpoints: int = 0
    timers: int = 0
    events: int = 0
    inbox_signals: int = 0
    schedules: int = 0
