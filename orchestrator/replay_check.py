"""``wf replay --check``: replay recorded runs against the workflow code the config imports,
with no daemon and no side effects (SPEC §14), before that code is deployed.

Runs come from export files (``wf export``) or, with ``--db``, straight from a database file
opened read-only (beside a live daemon: every in-flight run is checked against the new code
before the restart). Exit 0 when every run replays; 1 naming each run that diverged, with the
entry where it did, or whose workflow the code does not register.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from orchestrator import config
from orchestrator.daemon.loader import WorkflowImportError, import_workflow_modules
from orchestrator.engine.export import run_document
from runtime import journal_file, replaycheck
from runtime.journal_file import ExportedRun
from runtime.workflow import REGISTRY, Registry
from storage import errors as storage_errors
from storage.sqlite import readonly

DEFAULT_DB_STATUSES = ("running", "waiting", "paused")


class CheckError(Exception):
    """A usage problem: a bad file, config or database (exit 2, the message says which)."""


def load_code(config_path: str | None) -> Registry:
    """Import the workflow modules of the config (``./config.toml`` when not given)."""
    path = config_path or ("config.toml" if Path("config.toml").is_file() else None)
    if path is None:
        raise CheckError("give --config FILE: its [workflows] say which code to check against")
    try:
        cfg = config.load_config(path)
        import_workflow_modules(cfg.workflows.paths, cfg.workflows.modules)
    except (config.ConfigError, WorkflowImportError) as exc:
        raise CheckError(str(exc)) from exc
    return REGISTRY


def runs_from_files(paths: Sequence[str]) -> list[ExportedRun]:
    found: list[ExportedRun] = []
    for path in paths:
        try:
            found.extend(journal_file.load(path))
        except journal_file.JournalFileError as exc:
            raise CheckError(str(exc)) from exc
    return found


def runs_from_db(db: str, statuses: Sequence[str]) -> Iterable[ExportedRun]:
    try:
        conn = readonly.open_readonly(db)
    except storage_errors.StorageError as exc:
        raise CheckError(str(exc)) from exc
    try:
        for record in readonly.journals(conn, statuses or DEFAULT_DB_STATUSES):
            yield journal_file.parse(
                {"format": journal_file.FORMAT, "runs": [run_document(record)]}, db)[0]
    finally:
        conn.close()


async def check(
    paths: Sequence[str],
    *,
    db: str | None,
    statuses: Sequence[str],
    fail_fast: bool,
    config_path: str | None,
    registry: Registry | None = None,
) -> dict[str, Any]:
    """The report: ``{"checked", "ok", "diverged", "not_registered", "runs": [...]}``."""
    if bool(paths) == bool(db):
        raise CheckError("replay --check: give export files, or --db FILE (not both)")
    if db and db.startswith(("postgres://", "postgresql://")):
        # The read-only reader is SQLite's; a PostgreSQL daemon's runs go through export.
        raise CheckError("replay --check --db takes a SQLite file; on PostgreSQL, "
                         "`wf export` the runs and check the files")
    code = registry if registry is not None else load_code(config_path)
    runs = runs_from_db(db, statuses) if db else runs_from_files(paths)
    results = await replaycheck.check_all(runs, code, fail_fast=fail_fast)
    return summary(results)


def summary(results: list[dict[str, Any]]) -> dict[str, Any]:
    def count(kind: str) -> int:
        return sum(1 for r in results if r["result"] == kind)

    return {"checked": len(results), "ok": count("ok"), "diverged": count("diverged"),
            "not_registered": count("workflow_not_registered"), "runs": results}


def format_report(report: dict[str, Any]) -> str:
    lines: list[str] = []
    for r in report["runs"]:
        where = f"{r['run_id']} ({r['workflow_id']})"
        if r["result"] == "ok":
            lines.append(f"ok        {where}")
        elif r["result"] == "diverged":
            lines.append(f"DIVERGED  {where}: {describe(r['entry'])}")
        else:
            lines.append(f"UNKNOWN   {where}: {r['message']}")
    lines.append(f"{report['checked']} checked: {report['ok']} ok, {report['diverged']} "
                 f"diverged, {report['not_registered']} with no registered workflow")
    return "\n".join(lines)


def describe(entry: dict[str, Any]) -> str:
    kind = entry.get("kind")
    if kind == "inserted":
        return (f"new {_what(entry['new'])} before recorded entries "
                f"{_ids(entry['unconsumed'])}")
    if kind == "waitpoint":
        return (f"waitpoint {entry['wp_id']} {entry['field']}: recorded "
                f"{entry['recorded']!r}, code has {entry['found']!r}")
    if kind == "unreached":
        return f"ended before reaching recorded {_ids(entry)}"
    if kind == "position":
        return (f"step {entry['step_id']} at position {entry['position']}, recorded at "
                f"{entry['recorded_position']}")
    return str(entry)


def _what(new: dict[str, Any]) -> str:
    if "step_id" in new:
        return f"step {new['step_id']!r}"
    return f"wait {new.get('waitpoint')!r}"


def _ids(found: dict[str, Any]) -> str:
    ids = [*found.get("step_ids", ()), *found.get("waitpoint_ids", ())]
    return ", ".join(ids) or "(none)"
