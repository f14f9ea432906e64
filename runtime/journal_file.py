"""The export format of run journals (``wf export``): a versioned JSON document.

``{"format": "wf-journal/1", "engine": ..., "exported_at": ..., "runs": [{"run": {...},
"entries": [...], "metadata": {...}, "metadata_ops": N}]}``. Each entry carries ``seq``, its
run-wide sequence number, and ``type`` (``step``, ``waitpoint``, ``resolution``,
``compensation``, ``stream``); entries are listed in ``seq`` order. The document holds inputs,
outputs and payloads as recorded: treat it as the data it contains (it may be personal data).

It lives in ``runtime`` because a replay check reads it with nothing but the workflow code
(``wf replay --check``, :func:`runtime.testing.replay_check`): no daemon, no database.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from runtime.facts import RunFacts
from runtime.journal import (
    CompensationRan,
    Entry,
    Journal,
    StepAttempt,
    StreamChunk,
    WaitpointRegistered,
    WaitpointResolved,
)
from runtime.status import ResolutionSource, WaitpointKind

FORMAT_NAME = "wf-journal"
FORMAT_VERSION = 1
FORMAT = f"{FORMAT_NAME}/{FORMAT_VERSION}"


class JournalFileError(ValueError):
    """A file that is not a readable export: names the file and what is wrong."""


@dataclass(frozen=True, slots=True)
class ExportedRun:
    """One run of an export: its record (as JSON), and its journal as runtime entries."""

    run: Mapping[str, Any]
    entries: tuple[tuple[int, Entry], ...]
    metadata: Mapping[str, Any] = field(default_factory=dict)
    metadata_ops: int = 0

    @property
    def run_id(self) -> str:
        return str(self.run["run_id"])

    @property
    def workflow_id(self) -> str:
        return str(self.run["workflow_id"])

    @property
    def input(self) -> Any:
        return self.run.get("input")

    def facts(self, default_version: str) -> RunFacts:
        """What ``ctx.run`` said when the run was recorded (a replay must see the same)."""
        run = self.run
        started = run.get("started_at")
        return RunFacts(
            run_id=self.run_id,
            workflow_id=self.workflow_id,
            workflow_version=run.get("workflow_version") or default_version,
            started_at=float(started if started is not None else run.get("created_at") or 0.0),
            number=int(run.get("number") or 1),
            attempt=int(run.get("attempt") or 1),
            triggered_by=run.get("triggered_by") or "api",
            tags=tuple(run.get("tags") or ()),
            invocation_count=int(run.get("recoveries") or 0) + 1,
            parent_run_id=run.get("parent_run_id"),
            root_run_id=run.get("root_run_id"),
            compute_used=float(run.get("compute_seconds") or 0.0),
        )

    def journal(self) -> Journal:
        journal = Journal([entry for _, entry in self.entries])
        journal.metadata = dict(self.metadata)
        journal.metadata_ops = self.metadata_ops
        return journal


# --- writing ---------------------------------------------------------------------------------


def entry_json(seq: int, entry: Entry) -> dict[str, Any]:
    """One journal entry as the export writes it."""
    if isinstance(entry, StepAttempt):
        return {
            "seq": seq, "type": "step", "step_id": entry.step_id, "position": entry.position,
            "attempt": entry.attempt, "status": entry.status, "output": entry.output,
            "error": entry.error, "started_at": entry.started_at,
            "finished_at": entry.finished_at, "runtime": entry.runtime,
            "retry_at": entry.retry_at,
        }
    if isinstance(entry, WaitpointRegistered):
        return {
            "seq": seq, "type": "waitpoint", "wp_id": entry.wp_id, "kind": str(entry.kind),
            "registered_at": entry.registered_at, "due_at": entry.due_at,
            "timeout_at": entry.timeout_at, "meta": entry.meta,
        }
    if isinstance(entry, WaitpointResolved):
        return {
            "seq": seq, "type": "resolution", "wp_id": entry.wp_id, "kind": str(entry.kind),
            "resolved_at": entry.resolved_at, "source": str(entry.source),
            "payload": entry.payload, "error": entry.error,
            "matched_event_id": entry.matched_event_id,
        }
    if isinstance(entry, CompensationRan):
        return {
            "seq": seq, "type": "compensation", "step_id": entry.step_id,
            "status": entry.status, "error": entry.error, "finished_at": entry.finished_at,
        }
    if isinstance(entry, StreamChunk):
        return {
            "seq": seq, "type": "stream", "stream_id": entry.stream_id,
            "chunk_seq": entry.seq, "encoding": entry.encoding, "chunk": entry.chunk,
            "final": entry.final, "at": entry.at,
        }
    raise TypeError(f"cannot export journal entry {entry!r}")


def run_json(
    run: Mapping[str, Any],
    entries: list[tuple[int, Entry]],
    metadata: Mapping[str, Any],
    metadata_ops: int,
) -> dict[str, Any]:
    ordered = sorted(entries, key=lambda pair: pair[0])
    return {
        "run": dict(run),
        "entries": [entry_json(seq, entry) for seq, entry in ordered],
        "metadata": dict(metadata),
        "metadata_ops": metadata_ops,
    }


def document(runs: list[dict[str, Any]], *, engine: str, exported_at: float) -> dict[str, Any]:
    return {"format": FORMAT, "engine": engine, "exported_at": exported_at, "runs": runs}


# --- reading ---------------------------------------------------------------------------------


def load(path: str | Path) -> list[ExportedRun]:
    """Read an export file; ``JournalFileError`` naming the file and the problem."""
    name = str(path)
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise JournalFileError(f"{name}: cannot read: {exc.strerror or exc}") from exc
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise JournalFileError(f"{name}: not JSON ({exc})") from exc
    return parse(doc, name)


def parse(doc: Any, name: str = "<document>") -> list[ExportedRun]:
    if not isinstance(doc, dict):
        raise JournalFileError(f"{name}: not a {FORMAT_NAME} export (a JSON object is expected)")
    fmt = doc.get("format")
    if not isinstance(fmt, str) or not fmt.startswith(FORMAT_NAME + "/"):
        raise JournalFileError(
            f"{name}: not a {FORMAT_NAME} export (format {fmt!r}, expected {FORMAT!r})")
    if fmt != FORMAT:
        raise JournalFileError(
            f"{name}: format {fmt!r} is not one this build reads (it reads {FORMAT!r})")
    runs = doc.get("runs")
    if not isinstance(runs, list):
        raise JournalFileError(f"{name}: field 'runs' is missing or not a list")
    return [_run(item, f"{name}: runs[{i}]") for i, item in enumerate(runs)]


def _run(item: Any, where: str) -> ExportedRun:
    if not isinstance(item, dict):
        raise JournalFileError(f"{where}: not an object")
    run = _field(item, "run", dict, where)
    for key in ("run_id", "workflow_id"):
        _field(run, key, str, f"{where}.run")
    entries = _field(item, "entries", list, where)
    parsed = tuple(_entry(e, f"{where}.entries[{i}]") for i, e in enumerate(entries))
    metadata = item.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise JournalFileError(f"{where}: field 'metadata' is not an object")
    return ExportedRun(run, parsed, metadata, int(item.get("metadata_ops") or 0))


def _field(obj: Mapping[str, Any], key: str, kind: type, where: str) -> Any:
    if key not in obj:
        raise JournalFileError(f"{where}: field {key!r} is missing")
    value = obj[key]
    if not isinstance(value, kind):
        raise JournalFileError(f"{where}: field {key!r} is not a {kind.__name__}")
    return value


def _entry(e: Any, where: str) -> tuple[int, Entry]:
    if not isinstance(e, dict):
        raise JournalFileError(f"{where}: not an object")
    kind = e.get("type")
    make = _READERS.get(kind) if isinstance(kind, str) else None
    if make is None:
        raise JournalFileError(
            f"{where}: unknown entry type {kind!r} (known: {', '.join(sorted(_READERS))})")
    seq = _field(e, "seq", int, where)
    try:
        return seq, make(e)
    except KeyError as exc:
        raise JournalFileError(f"{where}: field {exc.args[0]!r} is missing") from exc
    except (TypeError, ValueError) as exc:
        raise JournalFileError(f"{where}: {exc}") from exc


def _step(e: dict[str, Any]) -> Entry:
    return StepAttempt(
        e["step_id"], int(e["position"]), int(e["attempt"]), e["status"], e.get("output"),
        e.get("error"), float(e["started_at"]), float(e["finished_at"]),
        e.get("runtime") or "inline", e.get("retry_at"),
    )


def _waitpoint(e: dict[str, Any]) -> Entry:
    return WaitpointRegistered(
        e["wp_id"], WaitpointKind(e["kind"]), float(e["registered_at"]), e.get("due_at"),
        e.get("timeout_at"), dict(e.get("meta") or {}),
    )


def _resolution(e: dict[str, Any]) -> Entry:
    return WaitpointResolved(
        e["wp_id"], WaitpointKind(e["kind"]), float(e["resolved_at"]),
        ResolutionSource(e["source"]), e.get("payload"), e.get("error"),
        e.get("matched_event_id"),
    )


def _compensation(e: dict[str, Any]) -> Entry:
    return CompensationRan(e["step_id"], e["status"], e.get("error"), float(e["finished_at"]))


def _stream(e: dict[str, Any]) -> Entry:
    return StreamChunk(
        e["stream_id"], int(e["chunk_seq"]), e["encoding"], e.get("chunk"), bool(e["final"]),
        float(e["at"]),
    )


_READERS: dict[str, Callable[[dict[str, Any]], Entry]] = {
    "step": _step,
    "waitpoint": _waitpoint,
    "resolution": _resolution,
    "compensation": _compensation,
    "stream": _stream,
}
