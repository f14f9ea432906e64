"""The service, written once: one frozen request dataclass per method (SPEC §6).

Each request type names its method and is typed by its result (``Request[R]``), the shape of
``storage/ops.py`` applied to the API. Everything else derives from these classes:

- the wire schema (:mod:`orchestrator.api.protocol` builds ``METHODS`` from the fields),
- the named methods of every front end (:class:`ServiceMethods`: ``submit = method(Submit)``
  takes ``Submit``'s own signature), implemented by the client over the socket and by the
  engine in process,
- the ``wf`` subcommands (:mod:`orchestrator.client.cli` builds its parser from the fields),
- the engine's handler table (one handler per request type).

A field's JSON type comes from its annotation (``str``, ``int``, ``bool``, ``JSON``,
``JSONDict``, ``tuple[str, ...]``) or, for durations, from :func:`opt`'s ``type``. Optional
fields are keyword-only. Errors are :class:`orchestrator.api.errors.ServiceError` subclasses.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Concatenate, Generic, ParamSpec, Protocol, TypeVar

from runtime import durations

JSON = Any
JSONDict = dict[str, Any]
R = TypeVar("R")
P = ParamSpec("P")

RUN_STATUSES = (
    "pending", "running", "waiting", "paused", "completed", "failed", "cancelled",
    "compensated", "compensation_failed", "timed_out",
)
TERMINAL_STATUSES = frozenset(
    {"completed", "failed", "cancelled", "compensated", "compensation_failed", "timed_out"}
)
LOG_LEVELS = ("debug", "info", "warning", "error")
RETRY_MODES = ("resume", "retrigger")
SCHEDULE_OVERLAPS = ("skip", "buffer_one", "buffer_all", "cancel_other", "allow")
"""``runtime.schedules.OVERLAPS`` (not imported: a client never loads cron or zone code)."""
BULK_ACTIONS = ("cancel", "pause", "resume", "retry")


def opt(
    default: Any = None,
    *,
    type: str | None = None,
    choices: tuple[str, ...] | None = None,
    minimum: int | None = None,
    maximum: int | None = None,
    flag: str | None = None,
    help: str = "",
) -> Any:
    """An optional (keyword-only) parameter. ``type`` overrides the JSON type the annotation
    gives (``"duration"``: seconds or a string such as ``"10s"``, reaching the service as
    float seconds); ``flag`` overrides the CLI flag (default ``--<name-with-dashes>``)."""
    meta = {"type": type, "choices": choices, "minimum": minimum, "maximum": maximum,
            "flag": flag, "help": help}
    return field(default=default, kw_only=True, metadata=meta)


def req(*, type: str | None = None, metavar: str | None = None, help: str = "",
        flag: str | None = None, choices: tuple[str, ...] | None = None) -> Any:
    """A required parameter (positional in Python and, unless ``flag`` is given, in the CLI)."""
    return field(metadata={"type": type, "metavar": metavar, "help": help, "flag": flag,
                           "choices": choices})


def arg(*, metavar: str | None = None, help: str = "") -> Any:
    """An optional parameter that is positional in Python and in the CLI (``pause RUN`` or
    ``pause --workflow W``): None when left out."""
    return field(default=None, metadata={"metavar": metavar, "help": help, "positional": True})


class Request(Generic[R]):
    """Base of every request. ``method`` is the wire name; ``cli`` the ``wf`` command words
    (empty: no command); ``streaming`` methods yield events, ``lossy`` ones may drop events
    for a slow reader (a ``lagged`` notice instead of unbounded buffering)."""

    __slots__ = ()
    method: ClassVar[str]
    cli: ClassVar[tuple[str, ...]] = ()
    streaming: ClassVar[bool] = False
    lossy: ClassVar[bool] = False

    def params(self) -> JSONDict:
        """The request as wire params: ``None`` left out, durations as seconds, tuples as
        lists. (``input``/``payload`` keep an explicit ``null``.)"""
        out: JSONDict = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]  # every subclass is one
            value = getattr(self, f.name)
            if value is None and f.kw_only:
                continue
            if f.metadata.get("type") == "duration" and value is not None:
                value = durations.to_seconds(value)
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        return out


class StreamRequest(Request[JSONDict]):
    """A streaming request: the service yields JSON events, then the stream ends."""

    __slots__ = ()
    streaming = True


# --- runs ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Submit(Request[JSONDict]):
    """Start a run. Returns its run record once committed (``delay`` seconds from now it
    starts); an existing ``run_id`` or ``(workflow_id, idempotency_key)`` returns that run."""

    method = "submit"
    cli = ("submit",)
    workflow_id: str = req(metavar="WF")
    input: JSON = req(flag="--input", help="JSON input or @file (default: {})")
    run_id: str | None = opt()
    idempotency_key: str | None = opt()
    tags: tuple[str, ...] = opt((), flag="--tag", help="tag (repeatable)")
    delay: float | str | None = opt(type="duration", help="start after D, e.g. 10s")
    priority: int = opt(0, minimum=-1000, maximum=1000, help="-1000..1000, higher first")
    ttl: float | str | None = opt(
        type="duration", help="cancel (EXPIRED) if not started D after it is due"
    )
    version: str | None = opt(help="start on this registered version (default: the newest)")
    traceparent: str | None = opt(
        help="W3C traceparent: the run's spans continue that trace (the Python client sends "
        "its current OpenTelemetry context by itself)"
    )


@dataclass(frozen=True, slots=True)
class Get(Request[JSONDict]):
    """Show a run with steps, waitpoints, metadata. The run record plus ``steps``,
    ``waitpoints``, ``metadata``, ``compensations``, ``audit`` (its amendments)."""

    method = "get"
    cli = ("show",)
    run_id: str = req(metavar="RUN")


@dataclass(frozen=True, slots=True)
class List(Request[JSONDict]):
    """List runs. ``{"runs": [run record, ...]}``, newest first."""

    method = "list"
    cli = ("runs",)
    status: str | None = opt(choices=RUN_STATUSES)
    workflow_id: str | None = opt(flag="--workflow")
    tag: str | None = opt()
    since: float | str | None = opt(
        type="moment", help="created at or after: TIME, or D ago (e.g. 1h)"
    )
    until: float | str | None = opt(type="moment", help="created before: TIME, or D ago")
    search: str | None = opt(
        help="text in the run id, input, output, error, tags or metadata (3+ characters)"
    )
    limit: int = opt(100, minimum=1)


@dataclass(frozen=True, slots=True)
class Wait(Request[JSONDict]):
    """Wait for a run to end. Its record once terminal, or the current one after ``timeout``."""

    method = "wait"
    cli = ("wait",)
    run_id: str = req(metavar="RUN")
    timeout: float | str | None = opt(type="duration")


@dataclass(frozen=True, slots=True)
class Cancel(Request[JSONDict]):
    """Cancel a run. Compensations run unless ``compensate`` is false; returns its record."""

    method = "cancel"
    cli = ("cancel",)
    run_id: str = req(metavar="RUN")
    compensate: bool = opt(True)
    reason: str | None = opt()


@dataclass(frozen=True, slots=True)
class Pause(Request[JSONDict]):
    """Pause a run, or a workflow. A run is held after its in-flight step (a pending one is not
    started); returns its record. A workflow's new and queued runs stay pending:
    ``{"workflow_id", "paused": true}``."""

    method = "pause"
    cli = ("pause",)
    run_id: str | None = arg(metavar="RUN")
    workflow_id: str | None = opt(flag="--workflow", help="pause the workflow W")


@dataclass(frozen=True, slots=True)
class Resume(Request[JSONDict]):
    """Resume a paused run (a delayed run: start it now), or a paused workflow. Returns the
    run's record, or ``{"workflow_id", "paused": false}``."""

    method = "resume"
    cli = ("resume",)
    run_id: str | None = arg(metavar="RUN")
    workflow_id: str | None = opt(flag="--workflow", help="resume the workflow W")


@dataclass(frozen=True, slots=True)
class Retry(Request[JSONDict]):
    """Retry an ended run. ``resume`` goes on from its journal, ``retrigger`` from scratch."""

    method = "retry"
    cli = ("retry",)
    run_id: str = req(metavar="RUN")
    mode: str = opt("resume", choices=RETRY_MODES)


@dataclass(frozen=True, slots=True)
class Bulk(Request[JSONDict]):
    """Apply an action to every run a filter selects. ``filter``: ``{status?, workflow_id?,
    tag?, since?, until?}`` (``since``/``until``: created at, as for ``list``); runs the action
    does not apply to are skipped. ``{"matched", "eligible", "done"}``; with ``dry_run``
    nothing is done. ``mode`` is for ``retry``, ``compensate``/``reason`` for ``cancel``."""

    method = "bulk"
    action: str = req(choices=BULK_ACTIONS)
    filter: JSONDict = req()
    dry_run: bool = opt(False)
    mode: str = opt("resume", choices=RETRY_MODES)
    compensate: bool = opt(True)
    reason: str | None = opt()


@dataclass(frozen=True, slots=True)
class Reschedule(Request[JSONDict]):
    """Move a pending run's start. ``delay`` from now or ``at`` (epoch seconds or ISO-8601);
    neither: now. Returns its record."""

    method = "reschedule"
    cli = ("reschedule",)
    run_id: str = req(metavar="RUN")
    delay: float | str | None = opt(type="duration", help="start D from now")
    at: float | str | None = opt(type="time", help="start at TIME (ISO-8601 or epoch seconds)")


@dataclass(frozen=True, slots=True)
class Replay(Request[JSONDict]):
    """Replay a run against its journal. ``{"diverged": bool, "detail": ...}``."""

    method = "replay"
    cli = ("replay",)
    run_id: str = req(metavar="RUN")


@dataclass(frozen=True, slots=True)
class Export(Request[JSONDict]):
    """Export runs (record + journal) as one versioned JSON document. ``{"format":
    "wf-journal/1", "engine", "exported_at", "runs": [{"run", "entries", "metadata",
    "metadata_ops"}]}``, entries in run-wide ``seq`` order; it holds inputs and outputs."""

    method = "export"
    cli = ("export",)
    run_ids: tuple[str, ...] = req(metavar="RUN")


@dataclass(frozen=True, slots=True)
class Fork(Request[JSONDict]):
    """Start a new run from another's journal. The journal is copied up to (not including)
    ``from_step`` (default: everything recorded, a final failure left out), with ``input``
    (default: the original's); the new run records ``forked_from``; the original is untouched.
    Returns the new run's record."""

    method = "fork"
    cli = ("fork",)
    run_id: str = req(metavar="RUN")
    from_step: str | None = opt(help="copy the journal up to this step (it runs again)")
    input: JSON = opt(help="the fork's input, JSON or @file (default: the original's)")
    run_id_new: str | None = opt(flag="--new-run-id", help="the new run's id")
    reason: str | None = opt(help="why (kept in forked_from)")


@dataclass(frozen=True, slots=True)
class Amend(Request[JSONDict]):
    """Replace the recorded result of a run's frontier step in place (the run failing on it,
    in its backoff, paused or held on it), with an audit row; ``wf retry RUN --mode resume``
    continues a failed run from it. Returns the run's record."""

    method = "amend"
    cli = ("amend",)
    run_id: str = req(metavar="RUN")
    step_id: str = req(flag="--step", metavar="STEP", help="the step to amend")
    output: JSON = req(flag="--output", help="the step's new output, JSON or @file")
    reason: str = req(flag="--reason", metavar="TEXT", help="why (kept in the audit trail)")


# --- resolutions --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SendEvent(Request[JSONDict]):
    """Send an event. It is committed and resolves every matching waitpoint:
    ``{"event_id", "resolved"}``; re-sending an ``event_id`` is a no-op. With ``dry_run``
    nothing is stored: ``{"dry_run": true, "would_resolve": [{run_id, waitpoint_id}],
    "would_start": [{workflow_id, run_id}], "would_batch": [workflow_id], "duplicate"}``."""

    method = "send_event"
    cli = ("event", "send")
    type: str = req(metavar="TYPE")
    payload: JSON = req(flag="--payload", help="JSON payload or @file")
    event_id: str | None = opt(flag="--id", help="event id (re-sending it is a no-op)")
    dry_run: bool = opt(False, help="say which runs it would resolve or start; send nothing")


@dataclass(frozen=True, slots=True)
class Events(Request[JSONDict]):
    """List stored events, newest first, with what each did: ``{"events": [{event_id, type,
    payload, received_at, resolved: [{run_id, waitpoint_id}], started: [run_id]}],
    "next_before"}`` (pass ``next_before`` as ``before`` for the next page)."""

    method = "events"
    cli = ("event", "list")
    type: str | None = opt(help="only events of this type")
    before: float | str | None = opt(type="moment", help="received before: TIME, or D ago")
    limit: int = opt(50, minimum=1, maximum=1000)


@dataclass(frozen=True, slots=True)
class Signal(Request[JSONDict]):
    """Signal a run. ``{"delivered": bool}`` (false: it went to the run's inbox)."""

    method = "signal"
    cli = ("signal",)
    run_id: str = req(metavar="RUN")
    name: str = req(metavar="NAME")
    payload: JSON = req(flag="--payload", help="JSON payload or @file")


@dataclass(frozen=True, slots=True)
class CompleteToken(Request[JSONDict]):
    """Complete a token. ``{"run_id"}``; ``TOKEN_CONFLICT`` if already completed."""

    method = "complete_token"
    cli = ("token", "complete")
    token_id: str = req(metavar="TOKEN")
    payload: JSON = req(flag="--payload", help="JSON payload or @file")


# --- introspection ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Workflows(Request[JSONDict]):
    """List registered workflows. ``{"workflows": [...]}``."""

    method = "workflows"
    cli = ("workflows",)


@dataclass(frozen=True, slots=True)
class Daemons(Request[JSONDict]):
    """The daemons registered on the database, oldest first (SPEC §13). ``{"daemons":
    [{"daemon_id", "name", "host", "pid", "version", "socket", "http", "started_at",
    "renewed_at", "lease_until", "live", "runs", "this"}]}``: ``live`` and the times are the
    database clock's; ``runs`` is how many runs the daemon drives; ``this`` marks the daemon
    that answered."""

    method = "daemons"
    cli = ("daemons",)


@dataclass(frozen=True, slots=True)
class Versions(Request[JSONDict]):
    """Workflow versions and patch ids still present on live (not ended) runs.
    ``{"workflows": [{"workflow_id", "registered_version", "live_runs", "versions":
    [{"version", "live_runs"}], "patches": [{"patch_id", "live_runs"}]}]}``: a version with no
    live run is drained; a patch id no live run carries may have its old path removed."""

    method = "versions"
    cli = ("versions",)
    workflow_id: str | None = opt(flag="--workflow", help="only this workflow")


@dataclass(frozen=True, slots=True)
class Schedules(Request[JSONDict]):
    """List schedules. ``{"schedules": [...]}`` with their next fire times."""

    method = "schedules"
    cli = ("schedules",)


# --- schedules ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ScheduleCreate(Request[JSONDict]):
    """Create a schedule. Exactly one of ``cron``, ``every``, ``at``; it starts ``workflow_id``
    with ``input`` until ``schedule_delete`` (creating an existing name replaces its rule,
    keeping its counters). Returns the schedule."""

    method = "schedule_create"
    cli = ("schedule", "create")
    name: str = req(metavar="NAME")
    workflow_id: str = req(flag="--workflow", help="the workflow each fire starts")
    cron: str | None = opt(help="cron expression, e.g. '0 3 * * *'")
    every: float | str | None = opt(type="duration", help="fire every D, e.g. 1h")
    at: float | str | None = opt(type="time", help="fire once at TIME (ISO-8601 or epoch)")
    timezone: str = opt("UTC", help="IANA zone the cron expression is read in")
    input: JSON = opt(flag="--input", help="the runs' JSON input or @file")
    overlap: str = opt("skip", choices=SCHEDULE_OVERLAPS,
                       help="what a fire does while the previous run has not ended")
    jitter: float | str | None = opt(type="duration", help="delay each fire by up to D")


@dataclass(frozen=True, slots=True)
class ScheduleDelete(Request[JSONDict]):
    """Delete a schedule. ``{"deleted": true}``; its runs stay."""

    method = "schedule_delete"
    cli = ("schedule", "delete")
    name: str = req(metavar="NAME")


@dataclass(frozen=True, slots=True)
class SchedulePause(Request[JSONDict]):
    """Pause a schedule. Nothing fires until ``schedule_resume``; returns the schedule."""

    method = "schedule_pause"
    cli = ("schedule", "pause")
    name: str = req(metavar="NAME")


@dataclass(frozen=True, slots=True)
class ScheduleResume(Request[JSONDict]):
    """Resume a paused schedule. It fires from its next due time on (fires due while paused
    are not made up); returns the schedule."""

    method = "schedule_resume"
    cli = ("schedule", "resume")
    name: str = req(metavar="NAME")


@dataclass(frozen=True, slots=True)
class ScheduleTrigger(Request[JSONDict]):
    """Fire a schedule now. Also while paused; ``{"runs": [run record]}``."""

    method = "schedule_trigger"
    cli = ("schedule", "trigger")
    name: str = req(metavar="NAME")


@dataclass(frozen=True, slots=True)
class ScheduleBackfill(Request[JSONDict]):
    """Start a run for every due time of a schedule in ``[start, end]``. Idempotent (one run
    per due time); ``{"runs": [run record, ...]}`` in due order."""

    method = "schedule_backfill"
    cli = ("schedule", "backfill")
    name: str = req(metavar="NAME")
    start: float | str = req(type="time", flag="--start", help="first time (ISO-8601 or epoch)")
    end: float | str = req(type="time", flag="--end", help="last time, included")


@dataclass(frozen=True, slots=True)
class Stats(Request[JSONDict]):
    """Show daemon counters. Server, storage, actors, timers."""

    method = "stats"
    cli = ("stats",)


@dataclass(frozen=True, slots=True)
class Prune(Request[JSONDict]):
    """Delete ended runs (with their children and every row they own) and old stored events.
    With ``older_than``: runs of ``status`` (default: every ended status) that ended more than
    that long ago; without: the ``[retention]`` ages of the config. ``{"runs": n, "events": n,
    "dry_run": bool}``; a dry run counts what would go and deletes nothing."""

    method = "prune"
    cli = ("prune",)
    older_than: float | str | None = opt(type="duration", help="ended more than D ago, e.g. 30d")
    status: str | None = opt(choices=tuple(sorted(TERMINAL_STATUSES)))
    workflow_id: str | None = opt(flag="--workflow")
    dry_run: bool = opt(False, help="count, delete nothing")


# --- streams ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Tail(StreamRequest):
    """Follow the daemon's log. Live records, optionally filtered; never ends by itself;
    lossy (a slow reader gets a ``lagged`` notice)."""

    method = "tail"
    cli = ("tail",)
    lossy = True
    run_id: str | None = opt(flag="--run")
    workflow_id: str | None = opt(flag="--workflow")
    level: str | None = opt(choices=LOG_LEVELS)


@dataclass(frozen=True, slots=True)
class Watch(StreamRequest):
    """Follow a run's state changes. Ends when the run is terminal."""

    method = "watch"
    cli = ("watch",)
    run_id: str = req(metavar="RUN")


@dataclass(frozen=True, slots=True)
class Stream(StreamRequest):
    """Print a run's stream. Chunks ``{stream_id, seq, encoding, chunk, final, at}``
    recorded so far; with ``follow`` also the live ones until the final chunk."""

    method = "stream"
    cli = ("stream",)
    run_id: str = req(metavar="RUN")
    stream_id: str = req(metavar="STREAM")
    follow: bool = opt(False, help="keep printing live chunks")


@dataclass(frozen=True, slots=True)
class Changes(StreamRequest):
    """Follow every run's status changes. ``{"seq", "run_id", "workflow_id", "status",
    "at"}`` each; with ``since`` (a ``seq`` seen before) the recent changes after it first.
    Never ends by itself; lossy (a slow reader gets a ``lagged`` notice)."""

    method = "changes"
    cli = ("changes",)
    lossy = True
    since: int | None = opt(minimum=0, help="replay the recent changes after this seq")


REQUESTS: tuple[type[Request[Any]], ...] = (
    Submit, Get, List, Wait, Cancel, Pause, Resume, Retry, Bulk, Reschedule, Replay, Export,
    Fork, Amend,
    SendEvent, Events, Signal, CompleteToken,
    Workflows, Versions, Daemons, Schedules, Stats, Prune,
    ScheduleCreate, ScheduleDelete, SchedulePause, ScheduleResume, ScheduleTrigger,
    ScheduleBackfill,
    Tail, Watch, Stream, Changes,
)
"""Every method, in the order the CLI lists them."""

BY_METHOD: dict[str, type[Request[Any]]] = {r.method: r for r in REQUESTS}


# --- the service -------------------------------------------------------------------------------


class Service(Protocol):
    """What a front end serves (the socket server, later HTTP): the engine in process."""

    async def dispatch(self, request: Request[R]) -> R:
        """Serve one request already validated by ``protocol.parse_params``; raise a
        ``ServiceError`` subclass on failure."""
        ...

    def open_stream(self, request: StreamRequest) -> AsyncIterator[JSONDict]:
        """Serve a streaming request: its events, until the stream ends."""
        ...


# --- the named methods --------------------------------------------------------------------------


def method(
    request: Callable[P, Request[R]],
) -> Callable[Concatenate[Any, P], Awaitable[R]]:
    """A named service method with ``request``'s own signature: ``submit = method(Submit)``."""

    async def call(self: Any, /, *args: P.args, **kwargs: P.kwargs) -> R:
        result: R = await self.call(request(*args, **kwargs))
        return result

    call.__name__ = call.__qualname__ = getattr(request, "method", "call")
    call.__doc__ = getattr(request, "__doc__", None)
    return call


def stream_method(
    request: Callable[P, StreamRequest],
) -> Callable[Concatenate[Any, P], AsyncIterator[JSONDict]]:
    """A named streaming method: returns an async iterator of the stream's events."""

    def open_(self: Any, /, *args: P.args, **kwargs: P.kwargs) -> AsyncIterator[JSONDict]:
        events: AsyncIterator[JSONDict] = self.open_stream(request(*args, **kwargs))
        return events

    open_.__name__ = open_.__qualname__ = getattr(request, "method", "open_stream")
    open_.__doc__ = getattr(request, "__doc__", None)
    return open_


class ServiceMethods:
    """The SPEC §6 methods by name, over :meth:`call` and :meth:`open_stream`.

    The client implements the two over the socket, the engine in process; both get every
    method below with the request type's signature (``await c.submit("wf", {"a": 1})``).
    """

    async def call(self, request: Request[R]) -> R:
        raise NotImplementedError

    def open_stream(self, request: StreamRequest) -> AsyncIterator[JSONDict]:
        raise NotImplementedError

    submit = method(Submit)
    get = method(Get)
    list = method(List)
    wait = method(Wait)
    cancel = method(Cancel)
    pause = method(Pause)
    resume = method(Resume)
    retry = method(Retry)
    bulk = method(Bulk)
    reschedule = method(Reschedule)
    replay = method(Replay)
    export = method(Export)
    fork = method(Fork)
    amend = method(Amend)
    send_event = method(SendEvent)
    events = method(Events)
    signal = method(Signal)
    complete_token = method(CompleteToken)
    workflows = method(Workflows)
    versions = method(Versions)
    daemons = method(Daemons)
    schedules = method(Schedules)
    schedule_create = method(ScheduleCreate)
    schedule_delete = method(ScheduleDelete)
    schedule_pause = method(SchedulePause)
    schedule_resume = method(ScheduleResume)
    schedule_trigger = method(ScheduleTrigger)
    schedule_backfill = method(ScheduleBackfill)
    stats = method(Stats)
    prune = method(Prune)
    tail = stream_method(Tail)
    watch = stream_method(Watch)
    stream = stream_method(Stream)
    changes = stream_method(Changes)
