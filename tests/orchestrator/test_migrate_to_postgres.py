"""``wf migrate --to URL``: a stopped daemon's SQLite database moves to PostgreSQL and its runs
(parked, sleeping, pending) and schedules go on there where they stopped."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

import storage
from orchestrator.client import cli
from orchestrator.daemon.lockfile import DatabaseLock
from tests import pg
from tests.orchestrator.conftest import open_engine, reach

pytestmark = pytest.mark.slow
RUNS = ("done", "parked", "sleeping", "pending")


def numbering(journal: storage.Journal) -> list[tuple[str, int | None, int | None]]:
    """Each journal entry's run-wide number (SPEC §3)."""
    return sorted([(f"step {a.step_id}/{a.attempt}", a.journal_seq, None)
                   for a in journal.attempts]
                  + [(f"wp {w.wp_id}", w.journal_seq, w.resolved_journal_seq)
                     for w in journal.waitpoints])


async def test_runs_continue_on_postgres_where_they_stopped_on_sqlite(
    tmp_path: Path, pg_cluster: pg.Cluster, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "wf.db"
    async with open_engine(db) as engine:
        await engine.submit("echo", 1, run_id="done")
        assert (await engine.wait("done", timeout=5))["status"] == "completed"
        await engine.submit("event", {"type": "paid"}, run_id="parked")
        await engine.submit("sleep", {"seconds": 1.0}, run_id="sleeping")
        await engine.submit("echo", 2, run_id="pending", delay=1.0)
        await reach(engine, "parked", "waiting")
        await reach(engine, "sleeping", "waiting")
    async with storage.SQLiteStorage.open(db) as s:
        spec = {"cron": "0 * * * *", "timezone": "UTC", "overlap": "skip"}
        await s.execute(storage.UpsertSchedule("hourly", "echo", spec, 1.0, next_fire_at=4e9))
        numbered = {rid: numbering(await s.load_journal(rid)) for rid in RUNS}
    url = await pg.create_database(pg_cluster, migrated=False)
    try:
        assert await asyncio.to_thread(cli.run, ["migrate", "--from", str(db), "--to", url]) == 0
        out = capsys.readouterr().out
        assert "counts verified" in out
        assert any(line.split() == ["runs", "4"] for line in out.splitlines())
        async with storage.PostgresStorage.open(url) as p:
            # The journals keep their numbers (the copy does not renumber them) and the search
            # index is rebuilt from the copied rows.
            assert {rid: numbering(await p.load_journal(rid)) for rid in RUNS} == numbered
            assert [r.run_id for r in await p.list_runs(search="parked")] == ["parked"]
        async with open_engine(url) as engine:
            assert (await engine.get("done"))["status"] == "completed"
            assert (await engine.send_event("paid", {"amount": 3}))["resolved"] == 1
            for run_id in ("parked", "sleeping", "pending"):
                assert (await engine.wait(run_id, timeout=5))["status"] == "completed", run_id
            assert [s["name"] for s in (await engine.schedules())["schedules"]] == ["hourly"]
            # New runs number on after the copied ones.
            new = await engine.submit("echo", 3, run_id="after")
            assert new["status"] in ("pending", "running", "completed")
        # A second copy into the same (now non-empty) database is refused.
        assert await asyncio.to_thread(cli.run, ["migrate", "--from", str(db), "--to", url]) == 1
        assert "not empty" in capsys.readouterr().err
    finally:
        await pg.drop_database(pg_cluster, url)


def test_migrate_refuses_while_a_daemon_holds_the_file(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "wf.db"
    db.touch()
    with DatabaseLock.acquire(db):
        assert cli.run(["migrate", "--from", str(db), "--to", "postgresql://x@/y"]) == 1
    assert "in use by another daemon" in capsys.readouterr().err


def test_migrate_needs_a_postgresql_url(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.run(["migrate", "--to", "sqlite:///x.db"]) == 2
    assert "postgresql://" in capsys.readouterr().err


def test_replay_check_db_names_export_for_postgresql(capsys: pytest.CaptureFixture[str]) -> None:
    """``--db`` reads a SQLite file; a PostgreSQL URL there is a clear usage error."""
    assert cli.run(["replay", "--check", "--db", "postgresql://wf@db/wf"]) == 2
    assert "wf export" in capsys.readouterr().err
