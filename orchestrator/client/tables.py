"""Human-readable rendering of what the client returns, for the ``wf`` CLI.

Only formatting: every function takes a JSON value the daemon sent and returns text. Missing
fields render as ``-`` so the CLI keeps working while record shapes grow. Times arrive as epoch
seconds (the JSON output keeps them so) and are shown as ISO-8601 UTC, ``2026-11-25T09:19:43Z``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson

__all__ = [
    "format_list",
    "format_log_record",
    "format_mapping",
    "format_result",
    "format_run_detail",
    "format_runs",
    "format_schedules",
    "iso_time",
    "table",
]


def cell(value: Any) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int | float):
        return str(value)
    return orjson.dumps(value).decode()


def iso_time(value: Any) -> str:
    """An epoch-seconds time as ISO-8601 UTC to the second (``2026-11-25T09:19:43Z``); an ISO
    string is normalised the same way; anything else renders as :func:`cell` does."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            moment = datetime.fromtimestamp(float(value), UTC)
        except (OverflowError, OSError, ValueError):
            return cell(value)
    else:
        parsed = _parse_time(value)
        if parsed is None:
            return cell(value)
        moment = parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _is_time_key(key: str) -> bool:
    return key.endswith(("_at", "_due")) or key in ("timestamp", "at", "next_due")


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Left-aligned columns separated by two spaces."""
    text_rows = [[cell(v) for v in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in text_rows:
        for i, value in enumerate(row):
            widths[i] = max(widths[i], len(value))
    lines = ["  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    for row in text_rows:
        lines.append("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
    return "\n".join(lines)


def _parse_time(value: Any) -> datetime | None:
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            return None
    return None


def duration(start: Any, end: Any) -> str:
    """``end - start`` as ``1.234s`` / ``12ms``; ``-`` when either is missing."""
    if isinstance(start, int | float) and isinstance(end, int | float):
        seconds = float(end) - float(start)
    else:
        t0, t1 = _parse_time(start), _parse_time(end)
        if t0 is None or t1 is None:
            return "-"
        seconds = (t1 - t0).total_seconds()
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    return f"{seconds:.3f}s"


def format_runs(runs: Sequence[Mapping[str, Any]]) -> str:
    if not runs:
        return "no runs"
    rows = [
        (
            r.get("run_id"),
            r.get("workflow_id"),
            r.get("status"),
            iso_time(r.get("created_at")),
            duration(r.get("started_at"), r.get("finished_at")),
            ",".join(r.get("tags") or ()),
        )
        for r in runs
    ]
    return table(("run_id", "workflow", "status", "created", "duration", "tags"), rows)


def format_error(error: Any) -> str:
    if not isinstance(error, Mapping):
        return cell(error)
    text = f"{error.get('code', '?')}: {error.get('message', '')}"
    if error.get("name"):
        text += f" ({error['name']})"
    return text


_RUN_FIELDS = (
    "run_id",
    "workflow_id",
    "status",
    "tags",
    "parent_run_id",
    "created_at",
    "started_at",
    "finished_at",
)


def format_run(run: Mapping[str, Any]) -> str:
    """The run record as aligned ``key: value`` lines (input/output as JSON, error as code)."""
    lines = [
        f"{key + ':':<14} {iso_time(run.get(key)) if _is_time_key(key) else cell(run.get(key))}"
        for key in _RUN_FIELDS
        if key in run
    ]
    if "started_at" in run:
        took = duration(run.get("started_at"), run.get("finished_at"))
        lines.append(f"{'duration:':<14} {took}")
    for key in ("input", "output"):
        if key in run:
            lines.append(f"{key + ':':<14} {cell(run.get(key))}")
    if run.get("error") is not None:
        lines.append(f"{'error:':<14} {format_error(run['error'])}")
    forked = run.get("forked_from")
    if isinstance(forked, Mapping):
        where = f" before step {forked['from_step']}" if forked.get("from_step") else ""
        why = f" ({forked['reason']})" if forked.get("reason") else ""
        lines.append(f"{'forked from:':<14} {forked.get('run_id')}{where}{why}")
    if (run.get("attempt") or 1) > 1:
        lines.append(f"{'attempt:':<14} {run['attempt']}")
    if run.get("paused") and run.get("status") != "paused":
        lines.append(f"{'paused:':<14} yes (held before its next step)")
    if run.get("cancel_requested") and run.get("status") not in _ENDED:
        lines.append(f"{'cancelling:':<14} {cell(run['cancel_requested'].get('reason'))}")
    pending = run.get("pending")
    if pending:
        why = ", ".join(f"{k}={iso_time(v) if _is_time_key(k) else cell(v)}"
                        for k, v in pending.items())
        lines.append(f"{'pending:':<14} {why}")
    return "\n".join(lines)


_ENDED = frozenset({"completed", "failed", "cancelled", "compensated", "compensation_failed",
                    "timed_out"})


def format_run_detail(run: Mapping[str, Any]) -> str:
    """``wf show``: the run, its steps with timings, waitpoints, compensations and metadata."""
    parts = [format_run(run)]
    steps = run.get("steps") or []
    parts.append("\nsteps:")
    if steps:
        rows = [
            (
                s.get("step_id"),
                s.get("status"),
                s.get("attempt"),
                iso_time(s.get("started_at")),
                duration(s.get("started_at"), s.get("finished_at")),
                format_error(s["error"]) if s.get("error") else None,
            )
            for s in steps
        ]
        headers = ("step", "status", "attempt", "started", "took", "error")
        parts.append(_indent(table(headers, rows)))
    else:
        parts.append("  (none)")
    waitpoints = run.get("waitpoints") or []
    parts.append("\nwaitpoints:")
    if waitpoints:
        rows = [
            (
                w.get("waitpoint_id") or w.get("id"),
                w.get("kind"),
                w.get("status") or ("resolved" if w.get("resolved_at") else "pending"),
                iso_time(w.get("due_at") or w.get("timeout_at")),
                iso_time(w.get("resolved_at")),
                w.get("source"),
            )
            for w in waitpoints
        ]
        parts.append(
            _indent(table(("waitpoint", "kind", "status", "due", "resolved", "source"), rows))
        )
    else:
        parts.append("  (none)")
    compensations = run.get("compensations") or []
    if compensations:
        comp_rows = [
            (
                c.get("step_id"),
                c.get("status"),
                iso_time(c.get("finished_at")),
                format_error(c["error"]) if c.get("error") else None,
            )
            for c in compensations
        ]
        parts.append("\ncompensations (in the order they ran):")
        parts.append(_indent(table(("step", "status", "finished", "error"), comp_rows)))
    metadata = run.get("metadata") or {}
    parts.append("\nmetadata:")
    parts.append(_indent(format_mapping(metadata)) if metadata else "  (none)")
    audit = run.get("audit") or []
    if audit:
        audit_rows = [
            (a.get("seq"), a.get("action"), a.get("step_id"), iso_time(a.get("at")),
             a.get("peer_uid"), a.get("reason"), cell((a.get("old") or {}).get("output")),
             cell((a.get("new") or {}).get("output")))
            for a in audit
        ]
        parts.append("\naudit:")
        parts.append(_indent(table(
            ("#", "action", "step", "at", "uid", "reason", "old output", "new output"),
            audit_rows)))
    previous = run.get("previous_attempts") or []
    if previous:
        prev_rows = [
            (p.get("retry"), p.get("attempt"), p.get("mode"), p.get("status"),
             iso_time(p.get("retried_at")),
             format_error(p["error"]) if p.get("error") else None)
            for p in previous
        ]
        parts.append("\nretries (what each one set aside):")
        parts.append(
            _indent(table(("retry", "attempt", "mode", "ended", "retried", "error"), prev_rows))
        )
    return "\n".join(parts)


def format_mapping(data: Mapping[str, Any], prefix: str = "") -> str:
    """Nested mappings flattened to ``a.b: value`` lines (``wf stats``, metadata)."""
    lines: list[str] = []
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            lines.append(format_mapping(value, prefix=f"{name}."))
        else:
            shown = iso_time(value) if _is_time_key(str(key)) else cell(value)
            lines.append(f"{name}: {shown}")
    return "\n".join(lines)


def format_result(result: Any) -> str:
    """Fallback for results without a dedicated view."""
    if isinstance(result, Mapping):
        return format_mapping(result) or "ok"
    return cell(result)


def format_list(items: Sequence[Any], empty: str) -> str:
    """A table with one column per key seen in the items (``wf workflows``, ``wf schedules``)."""
    if not items:
        return empty
    if not all(isinstance(i, Mapping) for i in items):
        return "\n".join(cell(i) for i in items)
    columns: dict[str, None] = {}
    for item in items:
        columns.update(dict.fromkeys(item))
    rows = [
        [iso_time(item.get(c)) if _is_time_key(c) else item.get(c) for c in columns]
        for item in items
    ]
    return table(tuple(columns), rows)


def format_daemons(items: Sequence[Mapping[str, Any]]) -> str:
    """``wf daemons``: name, host, pid, live or lapsed, lease left, runs owned, listeners."""
    if not items:
        return "no daemons registered"
    rows = [
        (
            f"{d.get('name')}{' *' if d.get('this') else ''}",
            d.get("pid"),
            "live" if d.get("live") else "lease expired",
            iso_time(d.get("started_at")),
            iso_time(d.get("lease_until")),
            d.get("runs"),
            d.get("socket"),
            d.get("http") or "-",
            d.get("version"),
        )
        for d in items
    ]
    return table(("name (* = answering)", "pid", "state", "started", "lease until", "runs",
                  "socket", "http", "version"), rows)


def format_schedules(items: Sequence[Mapping[str, Any]]) -> str:
    """``wf schedules``: name, workflow, rule, zone, next and last fire, paused, counters."""
    if not items:
        return "no schedules"
    rows = [
        (
            s.get("name"),
            s.get("workflow_id"),
            s.get("rule"),
            s.get("timezone"),
            iso_time(s.get("next_fire_at")),
            iso_time(s.get("last_fire_at")),
            bool(s.get("paused")),
            s.get("skipped", 0),
            s.get("missed", 0),
        )
        for s in items
    ]
    headers = ("name", "workflow", "rule", "timezone", "next_fire", "last_fire", "paused",
               "skipped", "missed")
    return table(headers, rows)


def format_events(items: Sequence[Mapping[str, Any]]) -> str:
    """``wf event list``: when, type, id, and the runs each resolved and started."""
    if not items:
        return "no stored events"
    rows = [
        (
            iso_time(e.get("received_at")),
            e.get("type"),
            e.get("event_id"),
            ", ".join(str(w.get("run_id")) for w in e.get("resolved") or ()) or "-",
            ", ".join(str(r) for r in e.get("started") or ()) or "-",
        )
        for e in items
    ]
    return table(("received", "type", "event_id", "resolved", "started"), rows)


def format_bulk(result: Mapping[str, Any], action: str) -> str:
    """``wf cancel|pause|resume|retry`` with filters: what matched and what was done."""
    matched, eligible = result.get("matched", 0), result.get("eligible", 0)
    if result.get("dry_run"):
        return f"{matched} runs match; {action} would apply to {eligible} (dry run)"
    return f"{matched} runs match; {action} applied to {result.get('done', 0)} of {eligible}"


def format_change(change: Mapping[str, Any]) -> str:
    """One ``wf changes`` line: ``seq time run_id workflow status``."""
    kind = change.get("type")
    if kind == "lagged":
        return (f"... {change.get('dropped')} changes dropped (reader too slow); "
                f"--since {change.get('since')} replays the recent ones")
    if kind == "gap":
        return f"... changes before seq {change.get('oldest')} are no longer kept"
    return (f"{change.get('seq')} {iso_time(change.get('at'))} {change.get('run_id')} "
            f"{change.get('workflow_id')} {change.get('status')}")


_LOG_SKIP = frozenset({"timestamp", "level", "event"})


def format_log_record(record: Mapping[str, Any]) -> str:
    """One ``wf tail`` line: ``timestamp level event key=value ...``."""
    if record.get("type") == "lagged":
        return f"... {record.get('dropped')} log records dropped (reader too slow)"
    extras = " ".join(f"{k}={cell(v)}" for k, v in record.items() if k not in _LOG_SKIP)
    level = cell(record.get("level"))
    head = f"{cell(record.get('timestamp'))} {level:<7} {cell(record.get('event'))}"
    return f"{head} {extras}".rstrip()


def _indent(text: str, by: str = "  ") -> str:
    return "\n".join(by + line for line in text.splitlines())
