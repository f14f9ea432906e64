"""``wf export RUN...``: runs (record + journal) as a ``wf-journal/1`` document
(:mod:`runtime.journal_file`), entries in their run-wide ``journal_seq`` order."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import storage
from orchestrator.api import views
from orchestrator.engine import bridge
from runtime import journal as rj
from runtime import journal_file

ENGINE = "wf"
"""The ``engine`` of an export (the format's own version is in ``format``)."""


def entries_of(record: storage.Journal) -> list[tuple[int, rj.Entry]]:
    """Every entry of the journal with its sequence number. An entry without one (a backend
    that does not number) sorts by time after the numbered ones."""
    positions = {s.step_id: s.position for s in record.steps}
    timed: list[tuple[int | None, float, rj.Entry]] = []
    for a in record.attempts:
        timed.append((a.journal_seq, a.finished_at or 0.0, rj.StepAttempt(
            a.step_id, positions.get(a.step_id, 0), a.attempt,
            "ok" if a.status is storage.StepStatus.COMPLETED else "err", a.output, a.error,
            a.started_at or 0.0, a.finished_at or 0.0, "inline", a.retry_at)))
    for wp in record.waitpoints:
        timed.append((wp.journal_seq, wp.registered_at, bridge.registration(wp)))
        if not wp.is_waiting:  # as bridge.runtime_journal: what a replay sees
            timed.append((wp.resolved_journal_seq, wp.resolved_at or wp.registered_at,
                          bridge.resolution(wp)))
    for c in record.compensations:
        timed.append((c.journal_seq, c.finished_at, rj.CompensationRan(
            c.step_id, "ok" if c.status is storage.CompensationStatus.COMPLETED else "err",
            c.error, c.finished_at)))
    for ch in record.stream_chunks:
        timed.append((ch.journal_seq, ch.at, rj.StreamChunk(
            ch.stream_id, ch.seq, ch.encoding, ch.chunk,  # type: ignore[arg-type]  # as written
            ch.final, ch.at)))
    numbered = sorted((t for t in timed if t[0] is not None), key=lambda t: t[0] or 0)
    unnumbered = sorted((t for t in timed if t[0] is None), key=lambda t: t[1])
    last = numbered[-1][0] or 0 if numbered else 0
    out = [(seq or 0, entry) for seq, _, entry in numbered]
    out.extend((last + i, entry) for i, (_, _, entry) in enumerate(unnumbered, start=1))
    return out


def run_document(record: storage.Journal) -> dict[str, Any]:
    return journal_file.run_json(
        views.run(record.run), entries_of(record), record.metadata, record.metadata_ops)


async def export(store: storage.Storage, run_ids: Sequence[str], at: float) -> dict[str, Any]:
    runs = [run_document(await store.load_journal(run_id)) for run_id in run_ids]
    return journal_file.document(runs, engine=ENGINE, exported_at=at)


