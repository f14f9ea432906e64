"""Write operations: what callers hand to ``Storage.commit``, and what each one returns.

An op is a frozen dataclass (the few built on every run's path are frozen for the type
checker only, see ``records.frozen_by_type``); ``WriteOp[R]`` says its result type ``R``. A
list of ops given to one ``commit`` call is applied in one transaction, all or nothing, in list
order.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any, Generic, Literal, TypeVar

from storage import records
from storage.records import JSON, frozen_by_type

R = TypeVar("R")


class Unset(Enum):
    """Marks a field of a partial update that leaves the stored value alone."""

    UNSET = "UNSET"

    def __repr__(self) -> str:
        return "UNSET"


UNSET = Unset.UNSET


class WriteOp(Generic[R]):
    """Base of every write op; ``R`` is the result ``commit`` returns for it."""

    __slots__ = ()


# --- results -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RunCreated:
    run: records.RunRecord
    created: bool


@dataclass(frozen=True, slots=True)
class WaitpointRegistered:
    waitpoint: records.WaitpointRecord
    """As stored; already resolved when a buffered signal or a lookback event satisfied it."""
    created: bool


@dataclass(frozen=True, slots=True)
class CancelMatch:
    """A run whose cancel rule an event matched."""

    run_id: str
    compensate: bool
    run: records.RunRecord
    """The run as stored, with the event's cancel request on it (``cancel_requested``)."""


@dataclass(frozen=True, slots=True)
class EventRecorded:
    inserted: bool
    resolved: tuple[records.WaitpointRecord, ...]
    started: tuple[records.RunRecord, ...] = ()
    """Runs the event's triggers created (re-sent events create none)."""
    batched: tuple[tuple[str, str, int], ...] = ()
    """``(workflow_id, batch_key, events waiting)`` for every batch the event joined."""
    cancel: tuple[CancelMatch, ...] = ()
    """Runs not yet ended whose cancel rule matches the event: their cancel request is stored
    in this transaction; the caller carries it out."""


@dataclass(frozen=True, slots=True)
class SignalSent:
    delivered: bool
    """True: resolved a waiting waitpoint; False: went to the run's inbox."""
    waitpoint: records.WaitpointRecord | None


@dataclass(frozen=True, slots=True)
class ChildRunCreated:
    run: records.RunRecord
    created: bool
    waitpoint: records.WaitpointRecord | None


@dataclass(frozen=True, slots=True)
class FiredTimer:
    timer: records.TimerRecord
    waitpoint: records.WaitpointRecord | None
    """The waitpoint this firing resolved (None if it had no target or was already resolved)."""


# --- runs --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CancelRule:
    """A run's cancel_on rule, stored with the run: ``event_type`` is the type (a prefix when
    ``wildcard``), ``match`` the resolved pattern."""

    event_type: str
    wildcard: bool
    match: JSON
    compensate: bool


def batch_timer_id(workflow_id: str, batch_key: str) -> str:
    """The id of a batch's ``batch`` timer."""
    return f"batch:{workflow_id}\x1f{batch_key}"


@dataclass(frozen=True, slots=True)
class BatchItem:
    """The event joins the batch ``(workflow_id, batch_key)``; a batch's first event arms a
    ``batch`` timer at its ``received_at + timeout``."""

    workflow_id: str
    batch_key: str
    timeout: float


@dataclass(frozen=True, slots=True)
class RegisterDaemon(WriteOp[float]):
    """Register a daemon process with a lease of ``lease`` seconds from the database clock.
    Returns ``lease_until`` (database clock). ``daemon_id`` must be fresh (never reused)."""

    daemon_id: str
    name: str
    host: str
    pid: int
    version: str
    socket: str
    http: str
    lease: float


@dataclass(frozen=True, slots=True)
class RenewLease(WriteOp["float | None"]):
    """Extend a live daemon's lease to ``lease`` seconds from the database clock; returns the
    new ``lease_until``, or None if the lease had already run out or the row is gone (another
    daemon may have adopted its runs: the daemon must stop writing)."""

    daemon_id: str
    lease: float
    http: str | None = None  # where it listens, once known (the HTTP port may be chosen late)


@dataclass(frozen=True, slots=True)
class RetireDaemon(WriteOp[None]):
    """A daemon stopping cleanly: release its runs (owner NULL) and delete its row."""

    daemon_id: str


@dataclass(frozen=True, slots=True)
class RescueDaemons(WriteOp[tuple[str, ...]]):
    """Declare every daemon whose lease ran out (database clock) dead: delete its row and
    release its runs (owner NULL, epoch + 1) for a live daemon to claim. Returns the dead
    daemons' ids. On PostgreSQL the DELETE waits for a dead daemon's batch in flight (its
    fence holds the row FOR SHARE), so nothing it wrote can land after the release."""

    daemon_id: str  # the rescuer (never declares itself dead)


@dataclass(frozen=True, slots=True)
class ClaimedRun:
    run: records.RunRecord
    epoch: int  # the run's epoch under its new owner


@dataclass(frozen=True, slots=True)
class ClaimRun(WriteOp["int | None"]):
    """Take one run for ``daemon_id`` if nobody owns it (or it already does). Returns the
    run's epoch under this owner, or None: another daemon drives it (SPEC §13: a run is driven
    by at most one daemon at a time)."""

    daemon_id: str
    run_id: str


@dataclass(frozen=True, slots=True)
class ClaimRuns(WriteOp[tuple[ClaimedRun, ...]]):
    """Take up to ``limit`` unowned runs that are not ended for ``daemon_id`` (owner = it,
    epoch + 1), highest priority then oldest first. Concurrent claimers on PostgreSQL skip
    each other's rows (``FOR UPDATE SKIP LOCKED``): each run is claimed once."""

    daemon_id: str
    limit: int = 1000


# --- flow control across daemons (issue 20, phase 3) --------------------------------------------

GroupKey = tuple[str, str | None]
"""A concurrency group ``(scope, key)``; ``key`` is None for an unkeyed limit."""


@dataclass(frozen=True, slots=True)
class ThrottleRule:
    """``limit`` starts per ``period`` seconds, ``burst`` of them at once (SPEC §2a)."""

    limit: int
    period: float
    burst: int

    def next_start(self, times: list[float], now: float) -> float:
        """The earliest time at or after ``now`` a start may happen after the sorted start
        ``times``: the sliding window (no more than ``limit`` in any ``period``) and, with
        ``burst < limit``, a cell-rate spacing of ``period / limit`` (GCRA)."""
        at = now
        if len(times) >= self.limit:
            at = max(at, times[-self.limit] + self.period)
        if self.burst < self.limit and times:
            interval = self.period / self.limit
            tat = times[0]
            for t in times:
                tat = max(tat, t) + interval
            at = max(at, tat - (self.burst - 1) * interval)
        return at


@dataclass(frozen=True, slots=True)
class FlowRules:
    """What the registered workflows declare, as data for an admission op (storage knows no
    workflows): concurrency limits by ``(scope, keyed)``, limits of unkeyed groups whose scope
    starts with a prefix (a schedule's own group), throttles by workflow id."""

    limits: tuple[tuple[str, bool, int], ...] = ()
    prefixes: tuple[tuple[str, int], ...] = ()
    throttles: tuple[tuple[str, ThrottleRule], ...] = ()
    replacing: tuple[tuple[str, str, bool], ...] = ()
    """``(workflow_id, scope, keyed)`` declared with ``cancel-in-progress``: that workflow's
    queued runs go first in such a group (a newcomer that replaced the holders takes the slot
    they free, whoever queued after it)."""

    def limit(self, group: GroupKey) -> int | None:
        scope, key = group
        for s, keyed, limit in self.limits:
            if s == scope and keyed == (key is not None):
                return limit
        if key is None:
            for prefix, limit in self.prefixes:
                if scope.startswith(prefix):
                    return limit
        return None

    def throttle(self, workflow_id: str) -> ThrottleRule | None:
        return next((rule for wf, rule in self.throttles if wf == workflow_id), None)

    def replacers(self, group: GroupKey) -> tuple[str, ...]:
        """The workflows whose queued runs go first in ``group`` (``replacing``)."""
        scope, key = group
        return tuple(wf for wf, s, keyed in self.replacing
                     if s == scope and keyed == (key is not None))


@dataclass(frozen=True, slots=True)
class Admitted:
    """What :class:`AdmitRuns` decided. ``offered``: ``admitted`` (it may start here now),
    ``queued`` (on ``group``, full), ``throttled`` (not before ``throttled_until``),
    ``refused`` (``group`` full and its strategy is cancel-newest: the caller ends it),
    ``gone`` (not a pending run, or admitted already by another daemon), ``none`` (no offer).
    ``admitted`` lists every run the op let start (the offered one and queued ones a pump
    took), each now owned by the caller. ``replaced_*``: cancel-in-progress found ``group``
    full: its holders to cancel, its queued runs (taken out of every queue) to end."""

    offered: Literal["admitted", "queued", "throttled", "refused", "gone", "none"]
    admitted: tuple[records.RunRecord, ...] = ()
    group: GroupKey | None = None
    throttled_until: float | None = None
    replaced_holders: tuple[str, ...] = ()
    replaced_queued: tuple[records.RunRecord, ...] = ()


@dataclass(frozen=True, slots=True)
class AdmitRuns(WriteOp[Admitted]):
    """Admission in the database, atomic across daemons (SPEC §2a, §13). Serialised with every
    other admission decision (PostgreSQL: one transaction advisory lock; SQLite has one
    writer). Holders of a group are counted from the runs' stored status (running,
    waiting, paused, or pending with ``admitted_at``), a throttle window from the stored
    ``admitted_at`` of its runs: nothing a crash can leak.

    ``offer``: a pending run that is due; it is queued on its groups and admitted if the
    queue order lets it (``strategies``: the workflow's strategy per group of its plan).
    ``release``: pending runs admitted but not started (held by a pause) go back to the
    queue. ``pump``: groups where a slot may have freed; ``pump_queued``: every group with
    due queued runs (a daemon's periodic safety net). Queued runs are taken fewest holders of
    their fairness key first, then priority, then age, except that runs of a workflow declaring
    ``cancel-in-progress`` on the group go before all others (``FlowRules.replacing``); each
    admitted run becomes the caller's (``owner``)."""

    daemon_id: str
    at: float
    rules: FlowRules
    offer: str | None = None
    strategies: tuple[str, ...] = ()
    pump: tuple[GroupKey, ...] = ()
    release: tuple[str, ...] = ()
    pump_queued: bool = False
    limit: int = 64


@dataclass(frozen=True, slots=True)
class DebouncedCreated:
    run: records.RunRecord
    created: bool  # False: the submission collapsed into ``run``, or the run existed


@dataclass(frozen=True, slots=True)
class DebounceSubmit(WriteOp[DebouncedCreated]):
    """A debounced submission across daemons, in one transaction serialised with every other
    admission decision: collapse into the key's pending run whose start has not come
    (its start moves to ``at + period``, never past its creation + ``max_wait``; its expiry
    moves with it; ``trailing`` replaces the input), else create ``create``."""

    create: CreateRun
    key: str
    period: float
    max_wait: float | None
    trailing: bool


@frozen_by_type
class CreateRun(WriteOp[RunCreated]):
    """Insert a run, or return the stored one with the same ``run_id`` or the same
    ``(workflow_id, idempotency_key)``. With ``scheduled_at`` a ``start`` timer
    ``start:<run_id>`` is inserted in the same transaction, with ``expires_at`` an ``expire``
    timer ``expire:<run_id>``. A run created terminal (``cancel-newest``) gets neither."""

    run_id: str
    workflow_id: str
    created_at: float
    input: JSON = None
    workflow_version: str | None = None
    tags: tuple[str, ...] = ()
    priority: int = 0
    idempotency_key: str | None = None
    parent_run_id: str | None = None
    root_run_id: str | None = None
    status: records.RunStatus = records.RunStatus.PENDING
    scheduled_at: float | None = None
    triggered_by: str | None = None
    parent_wp_id: str | None = None
    flow: JSON = None
    throttle_key: str | None = None
    expires_at: float | None = None
    error: JSON = None
    finished_at: float | None = None
    cancel_on: tuple[CancelRule, ...] = ()
    version_pinned: bool = False
    """The run resumes only on ``workflow_version`` (an explicit ``version=``, SPEC §14)."""
    traceparent: str | None = None
    """W3C ``traceparent`` (already validated): the run's spans continue that trace."""


@frozen_by_type
class UpdateRun(WriteOp[None]):
    """Partial update: fields left ``UNSET`` keep their stored value. ``add_compute_seconds``
    is added to the stored total. Setting ``status`` to ``running`` clears the run's
    ``needs_resume`` flag (every resolution sets it); setting a terminal status deletes the
    run's remaining timers (its start, expiry, timeouts: nothing of it is due any more).
    Unknown run → ``NotFound``."""

    run_id: str
    at: float
    status: records.RunStatus | Unset = UNSET
    output: JSON = UNSET
    error: JSON = UNSET
    started_at: float | Unset | None = UNSET
    finished_at: float | Unset | None = UNSET
    attempt: int | Unset = UNSET
    diverged: bool | Unset = UNSET
    recoveries: int | Unset = UNSET
    priority: int | Unset = UNSET
    add_compute_seconds: float = 0.0


@dataclass(frozen=True, slots=True)
class ReschedulePending(WriteOp[records.RunRecord]):
    """Move a run that has not started: its start (``scheduled_at``, None = now) and expiry
    (``expires_at``), and with ``input`` its input (a debounced submission). The run's ``start``
    and ``expire`` timers are replaced in the same transaction. Returns the updated run.
    Unknown run → ``NotFound``; a run that is not ``pending`` (or has started) →
    ``InvalidOperation``."""

    run_id: str
    at: float
    scheduled_at: float | None
    expires_at: float | Unset | None = UNSET
    input: JSON = UNSET


@dataclass(frozen=True, slots=True)
class EndPending(WriteOp["records.RunRecord | None"]):
    """End a run that never started (expired, cancelled while queued or delayed, replaced):
    ``status`` (terminal) and ``error`` are recorded, its timers deleted; a child's parent
    wait on it resolves with ``parent_error`` in the same transaction. Returns the ended run,
    or None when the run is not ``pending`` any more or has started (nothing is changed)."""

    run_id: str
    at: float
    status: records.RunStatus
    error: JSON = None
    parent_error: JSON = None


@dataclass(frozen=True, slots=True)
class CreateChildRun(WriteOp[ChildRunCreated]):
    """Create the child run and register the parent's ``invoke`` waitpoint together. The child's
    run id is chosen by the caller (deterministic), so re-doing this after a crash is a no-op."""

    child: CreateRun
    invoke: RegisterWaitpoint | None


# --- operator interventions (cancel, pause, resume, retry) --------------------------------------


@dataclass(frozen=True, slots=True)
class RunRetried:
    runs: tuple[records.RunRecord, ...]
    """The retried run first, then the children retried with it (``resume``), all ``pending``."""


@dataclass(frozen=True, slots=True)
class RequestCancel(WriteOp[records.RunRecord]):
    """Record an acknowledged cancel on the run (``cancel_requested``) so that whoever drives
    it next (its actor, or recovery after a crash) carries it out. The first request wins; a
    terminal run is left alone. Returns the run as stored. Unknown run → ``NotFound``."""

    run_id: str
    at: float
    reason: str | None = None
    compensate: bool = True
    code: str = "CANCELLED"


@dataclass(frozen=True, slots=True)
class RequestChildCancels(WriteOp[tuple[records.RunRecord, ...]]):
    """Record a cancel request on every non-terminal, non-detached child of ``parent_run_id``
    that has none yet (the parent was cancelled: SPEC §3). Returns those children."""

    parent_run_id: str
    at: float
    reason: str | None = None
    compensate: bool = True


@dataclass(frozen=True, slots=True)
class RequestPause(WriteOp[records.RunRecord]):
    """Set the run's ``paused`` flag; a ``waiting`` (parked) run becomes ``paused`` at once.
    Returns the run as stored; a terminal run is left alone. Unknown run → ``NotFound``."""

    run_id: str
    at: float


@dataclass(frozen=True, slots=True)
class ResumeRun(WriteOp[records.RunRecord]):
    """Clear the run's ``paused`` flag. A run whose status is ``paused`` takes ``status``
    (``waiting`` also sets ``needs_resume``, so recovery restarts it); UNSET leaves the status
    to the run's live actor. Returns the run as stored. Unknown run → ``NotFound``; a run that
    is not paused → ``InvalidOperation`` (``data.status``)."""

    run_id: str
    at: float
    status: records.RunStatus | Unset = UNSET


@dataclass(frozen=True, slots=True)
class RetryRun(WriteOp[RunRetried]):
    """Make a run that ended without completing ``pending`` again, its previous end and the
    entries taken out of its journal kept in ``run_archive``.

    ``retrigger``: the whole journal is archived and the run starts over as attempt + 1.
    ``resume``: completed steps stay; a step whose final attempt failed gets one more attempt
    (a resolved ``retry:STEP:N`` backoff waitpoint is added for it); a step whose compensation
    ran is undone, so it is archived with its compensation and runs again; a failed
    compensation is archived so it may run again; waits the end cancelled are waiting again
    (timers re-armed); a child that ended without completing is retried the same way, and a
    child that completed resolves its parent's wait. Unknown run → ``NotFound``; a run that is
    not terminal, or completed → ``InvalidOperation`` (``data.status``)."""

    run_id: str
    at: float
    mode: str = "resume"


@dataclass(frozen=True, slots=True)
class ForkRun(WriteOp[records.RunRecord]):
    """Create ``run`` (a new run) with a copy of ``source_run_id``'s journal cut before the
    run-wide sequence number ``before_seq`` (None: the whole journal), in one transaction.

    Copied: step attempts that completed or failed with a retry ahead (a step whose kept
    history ends in a final failure or an attempt in flight is left out: it runs again),
    waitpoints resolved before the cut (registration and resolution), stream chunks. Not
    copied: unresolved waitpoints, timers, tokens, compensations, metadata (the fork's replay
    emits its metadata ops again). ``renames`` gives ``(wp_id, new_wp_id, new_token_id)`` for
    the token waitpoints whose ids derive from the run id. The copy is numbered 1, 2, ... in
    the original order; ``forked_from`` is stored on the new run, and when anything was copied
    the original's ``started_at`` (the copy replays from it). Returns the new run.
    Unknown source → ``NotFound``; ``run.run_id`` already taken → ``InvalidOperation``."""

    run: CreateRun
    source_run_id: str
    before_seq: int | None
    forked_from: JSON
    renames: tuple[tuple[str, str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class RunAmended:
    run: records.RunRecord
    amendment: records.AmendmentRecord
    woken: bool
    """A backoff wait of the step was dropped: the run must be moved again."""


@dataclass(frozen=True, slots=True)
class AmendStep(WriteOp[RunAmended]):
    """Replace the recorded result of the run's frontier step ``step_id`` in place: it becomes
    ``completed`` with ``output`` (its attempt number stays); a waiting retry backoff of it and
    its timer are deleted (``woken``, and the run's ``needs_resume`` is set). An audit row
    (old and new value, ``peer_uid``, ``reason``, ``at``) is appended.

    Unknown run or step → ``NotFound``; a run ``running``, ``pending`` or ``completed`` →
    ``InvalidOperation`` with ``data.code = "RUN_NOT_ACTIVE"``; a journal entry after the step
    (other than its own backoff) → ``InvalidOperation`` with ``data.code = "NOT_FRONTIER"`` and
    ``data.later`` listing them (``{"type", "id", "seq"}``, up to 20)."""

    run_id: str
    step_id: str
    output: JSON
    reason: str
    at: float
    peer_uid: int | None = None


@dataclass(frozen=True, slots=True)
class SetWorkflowPaused(WriteOp[bool]):
    """Add (``paused``) or remove a workflow id in the paused workflows; True if it changed."""

    workflow_id: str
    paused: bool
    at: float


# --- journal -----------------------------------------------------------------------------------


@frozen_by_type
class RecordStepAttempt(WriteOp[None]):
    """Upsert the step's latest attempt and append the attempt to its history (re-recording the
    same attempt number replaces it). An older attempt never overwrites a newer one."""

    run_id: str
    step_id: str
    attempt: int
    status: records.StepStatus
    position: int = 0
    output: JSON = None
    error: JSON = None
    started_at: float | None = None
    finished_at: float | None = None
    runtime: str | None = None
    retry_at: float | None = None


@dataclass(frozen=True, slots=True)
class RecordCompensation(WriteOp[None]):
    run_id: str
    step_id: str
    status: records.CompensationStatus
    finished_at: float
    error: JSON = None


@dataclass(frozen=True, slots=True)
class AppendStreamChunk(WriteOp[bool]):
    """Idempotent by ``(run_id, stream_id, seq)``; returns whether the chunk was new."""

    run_id: str
    stream_id: str
    seq: int
    encoding: str
    chunk: JSON
    final: bool
    at: float


@dataclass(frozen=True, slots=True)
class ApplyMetadata(WriteOp[bool]):
    """Apply one metadata op to ``run_id`` exactly once. ``op_index`` counts the ops emitted by
    ``origin_run_id`` and must increase; an index at or below the highest applied one for that
    origin is skipped (returns False), so a replay re-emitting its ops changes nothing.
    ``increment`` adds ``value`` (default 1) to a number; ``append`` appends to a list (created
    if absent); ``remove`` deletes the key. A type mismatch → ``InvalidOperation``."""

    run_id: str
    origin_run_id: str
    op_index: int
    op: records.MetadataOpKind
    key: str
    value: JSON = None


# --- waitpoints, events, signals, tokens ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RegisterWaitpoint(WriteOp[WaitpointRegistered]):
    """Register a waitpoint, idempotent by ``(run_id, wp_id)`` (a second registration returns
    the stored record unchanged).

    In the same transaction: a MANUAL waitpoint's ``token_id`` is reserved (held by another
    waitpoint → ``TokenConflict``); a timer ``wp:<run_id>:<wp_id>`` is inserted when ``due_at``
    (kind ``sleep``) or ``timeout_at`` (kind ``timeout``) is set, ``timer_kind`` overriding the
    kind; a SIGNAL waitpoint consumes the oldest inbox signal of its name and resolves at once
    (source ``inbox``); an EVENT waitpoint with ``lookback_from`` resolves at once from the
    oldest stored event of its type received at or after that time that ``matches`` accepts and
    that no other waitpoint of this run consumed (source ``inbox``)."""

    run_id: str
    wp_id: str
    kind: records.WaitpointKind
    registered_at: float
    meta: JSON = None
    event_type: str | None = None
    signal_name: str | None = None
    match: JSON = None
    token_id: str | None = None
    due_at: float | None = None
    timeout_at: float | None = None
    timer_kind: records.TimerKind | None = None
    timer_payload: JSON = None
    lookback_from: float | None = None
    matches: records.Matcher | None = None

    def __post_init__(self) -> None:
        if self.kind is records.WaitpointKind.EVENT and not self.event_type:
            raise ValueError(f"EVENT waitpoint {self.wp_id!r} needs an event_type")
        if self.kind is records.WaitpointKind.SIGNAL and not self.signal_name:
            raise ValueError(f"SIGNAL waitpoint {self.wp_id!r} needs a signal_name")
        if self.lookback_from is not None and self.match is not None and self.matches is None:
            raise ValueError(f"waitpoint {self.wp_id!r}: lookback with a match needs `matches`")


@dataclass(frozen=True, slots=True)
class ResolveWaitpoint(WriteOp[bool]):
    """Resolve a waiting waitpoint and delete its timers. Returns True only for the call that
    resolved it: a timer and an event racing resolve it exactly once."""

    run_id: str
    wp_id: str
    resolved_at: float
    source: records.ResolutionSource
    payload: JSON = None
    error: JSON = None
    matched_event_id: str | None = None
    child_run_id: str | None = None
    """A child's end: resolve only if the waitpoint waits on this child (a parent retried
    from scratch waits on new children under the same waitpoint ids)."""


@dataclass(frozen=True, slots=True)
class RecordEvent(WriteOp[EventRecorded]):
    """Store the event and, in the same transaction: resolve every waiting EVENT waitpoint of
    its type whose ``match`` is None or accepted by ``matches`` (source ``live``), oldest
    registration first; create the runs of ``start`` (its triggers; idempotent by run id); add
    it to the batches of ``batch``; and, with ``cancel``, report the runs whose cancel rules it
    matches. A re-sent ``event_id`` is a no-op: ``inserted`` False, nothing else done."""

    event_id: str
    type: str
    payload: JSON
    received_at: float
    matches: records.Matcher
    start: tuple[CreateRun, ...] = ()
    batch: tuple[BatchItem, ...] = ()
    cancel: bool = False


@dataclass(frozen=True, slots=True)
class FlushBatch(WriteOp[RunCreated]):
    """Start a batch's run: delete the batch's events ``event_ids`` and create ``run`` (its
    input holds them), idempotent by run id; the batch's timer moves to its next first event's
    ``received_at + timeout``, or goes when none is left."""

    workflow_id: str
    batch_key: str
    event_ids: tuple[str, ...]
    run: CreateRun
    timeout: float


@dataclass(frozen=True, slots=True)
class SendSignal(WriteOp[SignalSent]):
    """Resolve the run's oldest-registered waitpoint waiting on ``name`` (source ``live``), or
    append the signal to the run's inbox. Unknown run → ``NotFound``."""

    run_id: str
    name: str
    payload: JSON
    sent_at: float


@dataclass(frozen=True, slots=True)
class CompleteToken(WriteOp[records.WaitpointRecord]):
    """Resolve the token's MANUAL waitpoint (source ``live``) and return it. Unknown token →
    ``NotFound``; already completed or timed out → ``TokenConflict``."""

    token_id: str
    payload: JSON
    completed_at: float


# --- timers, schedules, rate limits ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UpsertTimer(WriteOp[None]):
    timer_id: str
    kind: records.TimerKind
    due_at: float
    created_at: float
    run_id: str | None = None
    wp_id: str | None = None
    payload: JSON = None


@dataclass(frozen=True, slots=True)
class DeleteTimer(WriteOp[bool]):
    timer_id: str


@dataclass(frozen=True, slots=True)
class FireTimer(WriteOp["FiredTimer | None"]):
    """Delete the timer and resolve the waitpoint it targets, in one transaction (a ``sleep`` or
    ``retry`` timer resolves with source ``live``, a ``timeout`` timer with ``timeout``).
    Returns None when the timer is gone (already fired or deleted) or not yet due at
    ``fired_at`` — a timer never fires while the wall clock reads earlier than its due time."""

    timer_id: str
    fired_at: float


@dataclass(frozen=True, slots=True)
class ClaimDueTimers(WriteOp[tuple[FiredTimer, ...]]):
    """Fire (as ``FireTimer``) up to ``limit`` timers due at ``before``, oldest first."""

    before: float
    limit: int = 1000


def schedule_timer_id(name: str) -> str:
    """The timer that wakes the engine for schedule ``name``'s next fire."""
    return f"schedule:{name}"


@dataclass(frozen=True, slots=True)
class UpsertSchedule(WriteOp[records.ScheduleRecord]):
    """Insert schedule ``name`` or replace its definition (workflow, spec, source, next due
    and fire times; ``paused`` when given). Its fire counters and last fire are kept
    (``last_fire_at`` replaces the stored one only when given). Its timer
    ``schedule:<name>`` is placed at ``next_fire_at`` in the same transaction, or deleted when
    there is none or the schedule is paused. ``next_due_at`` defaults to ``next_fire_at``.
    Returns the stored schedule."""

    name: str
    workflow_id: str
    spec: JSON
    updated_at: float
    next_fire_at: float | None = None
    last_fire_at: float | None = None
    source: records.ScheduleSource = records.ScheduleSource.API
    next_due_at: float | None = None
    paused: bool | Unset = UNSET


@dataclass(frozen=True, slots=True)
class DeleteSchedule(WriteOp[bool]):
    """Delete the schedule and its timer; False when there was none. Its runs stay."""

    name: str


@dataclass(frozen=True, slots=True)
class PauseSchedule(WriteOp[records.ScheduleRecord]):
    """Pause (its timer is deleted: nothing fires) or resume the schedule (its next due and
    fire times are set and its timer placed). Unknown schedule → ``NotFound``."""

    name: str
    paused: bool
    at: float
    next_due_at: float | None = None
    next_fire_at: float | None = None


@dataclass(frozen=True, slots=True)
class ScheduleFired:
    schedule: records.ScheduleRecord | None
    """The schedule after this fire; None when it does not exist."""
    run: records.RunRecord | None
    """The fire's run (created now, or found under its run id); None when no run was made."""
    created: bool
    """A run was inserted by this fire."""
    dropped: bool
    """The overlap policy dropped the fire (counted in ``skipped``)."""
    stale: bool
    """Nothing was done: the schedule is paused, gone, or its next due time is no longer the
    one this fire was computed from (another fire, a resume or an update came first)."""
    previous: records.RunRecord | None
    """The run of the fire before this one, when it has not ended."""


DropIf = Literal["never", "active", "waiting"]


@dataclass(frozen=True, slots=True)
class FireSchedule(WriteOp[ScheduleFired]):
    """One fire of schedule ``name``, in one transaction: the run is created (or found under
    its deterministic run id, so a fire done again after a crash makes no second run), the fire
    is recorded (last fire = ``due_at``, last run id, ``fired`` + 1, ``missed`` added) and,
    unless ``expect_next_due`` is ``UNSET`` (a manual trigger), the schedule moves on to
    ``next_due_at`` / ``next_fire_at`` with its timer.

    ``drop_if`` applies the overlap policy to the previous fire's run: ``active`` drops this
    fire while that run has not ended (``skip``), ``waiting`` while it has not even started
    (``buffer_one``); a dropped fire creates no run and counts in ``skipped``, and the schedule
    still moves on. A fire computed from a ``next_due_at`` that is no longer stored, or for a
    paused schedule, does nothing (``stale``). Unknown schedule: ``schedule`` is None."""

    name: str
    at: float
    due_at: float
    run: CreateRun
    drop_if: DropIf = "never"
    expect_next_due: float | Unset = UNSET
    next_due_at: float | None = None
    next_fire_at: float | None = None
    missed: int = 0


@dataclass(frozen=True, slots=True)
class PutRateLimit(WriteOp[None]):
    key: str
    tokens: float
    updated_at: float


@dataclass(frozen=True, slots=True)
class BucketTake:
    """``units`` from the token bucket ``key``: ``limit`` units refilled over ``window`` s."""

    key: str
    limit: int
    window: float
    units: int = 1


@dataclass(frozen=True, slots=True)
class TakeRateLimits(WriteOp[tuple[float, tuple[str, ...]]]):
    """Take every one of ``takes`` from the stored buckets at ``now``, or none (SPEC §2a, §13):
    each bucket's level is read from the database in the op's transaction, serialised with
    every daemon's takes (PostgreSQL: admission's advisory lock; SQLite has one writer).
    Returns ``(0, ())`` when all were taken, else ``(seconds until all have room, the short
    keys)`` with nothing taken. A bucket never stored is full."""

    takes: tuple[BucketTake, ...]
    now: float


WriteBatch = list[WriteOp[Any]]
"""Ops applied together in one transaction, in order."""


# --- retention ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PruneRuns(WriteOp[tuple[str, ...]]):
    """Delete up to ``limit`` ended run trees, oldest first, with every row they own in every
    table: root runs (no parent) whose status is one of ``statuses`` (terminal ones only) and
    that were created and finished before ``before``, whose descendants have all ended too.
    A child goes only with its root. Returns the run ids deleted (roots and descendants).

    With ``budget`` (seconds) the op stops between trees once its deletes took that long (a
    few trees at a time, at least one tree per op), so one op never holds the writer much
    longer than the budget whatever the trees hold; the caller loops until ``()``."""

    statuses: tuple[records.RunStatus, ...]
    before: float
    workflow_id: str | None = None
    limit: int = 50
    budget: float | None = None


@dataclass(frozen=True, slots=True)
class PruneEvents(WriteOp[int]):
    """Delete up to ``limit`` stored events received before ``before``; returns how many."""

    before: float
    limit: int = 500


@dataclass(frozen=True, slots=True)
class MergeSearchIndex(WriteOp[bool]):
    """Merge the full-text index's segments, about ``pages`` pages of work; returns whether
    there was work to do. FTS5 keeps a deleted row's postings as delete markers until their
    segments merge, so pruned runs free their search pages only after this."""

    pages: int


@dataclass(frozen=True, slots=True)
class IncrementalVacuum(WriteOp[int]):
    """Give up to ``pages`` free pages back to the file system (a no-op unless the file has
    ``auto_vacuum = INCREMENTAL``); returns the free pages left."""

    pages: int


RUN_WRITES: tuple[type[WriteOp[Any]], ...] = (
    RecordStepAttempt, RecordCompensation, AppendStreamChunk, ApplyMetadata, RegisterWaitpoint,
    UpdateRun,
)
"""A run's journal and status writes: where daemons share a database, refused
(``RunNotOwned``) for a run another daemon owns (SPEC §13 fencing)."""
