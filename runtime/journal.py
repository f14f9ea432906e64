"""The journal: what a run has durably recorded, as typed entries, and the view built from them.

The executor emits entries as the body produces them; the host makes each durable before the body
continues. A cold replay rebuilds a :class:`Journal` from the stored entries and re-runs the body
against it. Times are float seconds since the epoch (UTC).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from runtime.status import ResolutionSource, WaitpointKind

StepStatus = Literal["ok", "err"]
MetadataOpName = Literal["set", "increment", "append", "remove"]
MetadataTarget = Literal["self", "parent", "root"]
StreamEncoding = Literal["text", "json", "base64"]


@dataclass(frozen=True, slots=True)
class StepAttempt:
    """One attempt of a step. ``retry_at`` is set when a failed attempt will be retried then."""

    step_id: str
    position: int
    attempt: int
    status: StepStatus
    output: Any
    error: dict[str, Any] | None
    started_at: float
    finished_at: float
    runtime: str = "inline"
    retry_at: float | None = None


@dataclass(frozen=True, slots=True)
class WaitpointRegistered:
    """A waitpoint the body reached; ``due_at`` is the absolute wake time of DATETIME ones."""

    wp_id: str
    kind: WaitpointKind
    registered_at: float
    due_at: float | None = None
    timeout_at: float | None = None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class WaitpointResolved:
    """How a waitpoint was resolved. The host records these; the executor only reads them."""

    wp_id: str
    kind: WaitpointKind
    resolved_at: float
    source: ResolutionSource
    payload: Any = None
    error: dict[str, Any] | None = None
    matched_event_id: str | None = None


@dataclass(frozen=True, slots=True)
class MetadataOp:
    """A metadata mutation; ``index`` counts the run's mutations so each applies exactly once."""

    index: int
    op: MetadataOpName
    key: str
    value: Any
    target: MetadataTarget = "self"


@dataclass(frozen=True, slots=True)
class StreamChunk:
    stream_id: str
    seq: int
    encoding: StreamEncoding
    chunk: Any
    final: bool
    at: float


@dataclass(frozen=True, slots=True)
class CompensationRan:
    step_id: str
    status: StepStatus
    error: dict[str, Any] | None
    finished_at: float


Entry = (
    StepAttempt
    | WaitpointRegistered
    | WaitpointResolved
    | MetadataOp
    | StreamChunk
    | CompensationRan
)


class Journal:
    """The recorded state of one run, keyed the way the body looks things up."""

    __slots__ = (
        "body_registrations",
        "compensations",
        "metadata",
        "metadata_ops",
        "registrations",
        "reopened",
        "resolutions",
        "size",
        "steps",
        "streams",
    )

    def __init__(self, entries: list[Entry] | tuple[Entry, ...] = ()) -> None:
        self.steps: dict[str, StepAttempt] = {}
        self.registrations: dict[str, WaitpointRegistered] = {}
        # Registrations the body makes itself (not a step's retry backoff, which a replay of
        # the step's last attempt never reaches): what divergence detection counts.
        self.body_registrations = 0
        # Steps the host reopened (a retry undid them): new work wherever the body reaches them.
        self.reopened: set[str] = set()
        self.resolutions: dict[str, WaitpointResolved] = {}
        self.compensations: dict[str, CompensationRan] = {}
        self.metadata: dict[str, Any] = {}
        self.metadata_ops = 0
        self.streams: dict[str, list[StreamChunk]] = {}
        self.size = 0
        for entry in entries:
            self.apply(entry)

    def apply(self, entry: Entry) -> None:
        """Fold one entry in. Re-applying an entry already folded in changes nothing.

        Raises ``TypeError`` for anything that is not an ``Entry``.
        """
        if isinstance(entry, StepAttempt):
            current = self.steps.get(entry.step_id)
            if current is None or entry.attempt >= current.attempt:
                self.steps[entry.step_id] = entry
        elif isinstance(entry, WaitpointRegistered):
            if entry.wp_id not in self.registrations:
                self.registrations[entry.wp_id] = entry
                if is_body_waitpoint(entry.wp_id):
                    self.body_registrations += 1
        elif isinstance(entry, WaitpointResolved):
            self.resolutions.setdefault(entry.wp_id, entry)
        elif isinstance(entry, MetadataOp):
            if entry.index >= self.metadata_ops:
                self.metadata_ops = entry.index + 1
                if entry.target == "self":
                    apply_metadata(self.metadata, entry.op, entry.key, entry.value)
        elif isinstance(entry, StreamChunk):
            chunks = self.streams.setdefault(entry.stream_id, [])
            if entry.seq == len(chunks):
                chunks.append(entry)
        elif isinstance(entry, CompensationRan):
            self.compensations.setdefault(entry.step_id, entry)
        else:
            raise TypeError(f"unknown journal entry {entry!r}")
        self.size += 1

    def stream_completed(self, stream_id: str) -> bool:
        chunks = self.streams.get(stream_id)
        return bool(chunks) and chunks[-1].final  # type: ignore[index]  # bool() guards None


def is_body_waitpoint(wp_id: str) -> bool:
    """Whether the body itself reaches ``wp_id`` on replay (a retry backoff it may skip)."""
    return not wp_id.startswith("retry:")


def apply_metadata(state: dict[str, Any], op: MetadataOpName, key: str, value: Any) -> None:
    """Apply one metadata mutation to ``state`` in place (the daemon uses the same rules)."""
    if op == "set":
        state[key] = value
    elif op == "increment":
        current = state.get(key, 0)
        if not isinstance(current, int | float) or isinstance(current, bool):
            current = 0
        state[key] = current + value
    elif op == "append":
        current = state.get(key)
        if not isinstance(current, list):
            current = [] if current is None else [current]
        state[key] = [*current, value]
    else:
        state.pop(key, None)
