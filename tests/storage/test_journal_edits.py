"""Fork and amend in storage (SPEC §14, migration 0009): what a fork copies at a cut in the
run-wide order, and how an amend checks the frontier and keeps its append-only audit row."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

import storage as st
from tests.storage.conftest import make_run

DONE, FAILED, RUNNING = st.StepStatus.COMPLETED, st.StepStatus.FAILED, st.StepStatus.RUNNING
LIVE = st.ResolutionSource.LIVE


async def _history(s: st.Storage) -> None:
    """r1: a(1) b#1 failed with a retry(2) sleep registered(3) c(4) sleep resolved(5) b#2(6)
    d in flight(7) token registered(8) and resolved(9), e final failure(10)."""
    await make_run(s, "r1")
    await s.execute(st.UpdateRun("r1", 0.5, started_at=0.5))
    await s.execute(st.RecordStepAttempt("r1", "a", 1, DONE, output="A", finished_at=1.0))
    await s.execute(st.RecordStepAttempt("r1", "b", 1, FAILED, position=1, finished_at=2.0,
                                         retry_at=3.0, error={"code": "X"}))
    await s.execute(st.RegisterWaitpoint("r1", "sleep:0", st.WaitpointKind.DATETIME, 2.0,
                                         due_at=5.0))
    await s.execute(st.RecordStepAttempt("r1", "c", 1, DONE, position=2, finished_at=4.0))
    await s.execute(st.ResolveWaitpoint("r1", "sleep:0", 5.0, LIVE))
    await s.execute(st.RecordStepAttempt("r1", "b", 2, DONE, position=1, output="B",
                                         finished_at=6.0))
    await s.execute(st.RecordStepAttempt("r1", "d", 1, RUNNING, position=3, started_at=7.0))
    await s.execute(st.RegisterWaitpoint("r1", "token:tok_old", st.WaitpointKind.MANUAL, 8.0,
                                         token_id="tok_old", meta={"token_id": "tok_old"}))
    await s.complete_token(st.CompleteToken("tok_old", "ok", 9.0))
    await s.execute(st.RecordStepAttempt("r1", "e", 1, FAILED, position=4, finished_at=10.0,
                                         error={"code": "E"}))


def _fork(new_id: str, before: int | None, source: str = "r1") -> st.ForkRun:
    return st.ForkRun(st.CreateRun(run_id=new_id, workflow_id="wf", created_at=20.0),
                      source, before, {"run_id": source}, (("token:tok_old", "token:tok_new",
                                                            "tok_new"),))


async def test_a_fork_copies_what_was_recorded_before_the_cut_renumbered(tmp_path: Path) -> None:
    async with st.SQLiteStorage.open(tmp_path / "wf.db") as s:
        await _history(s)
        before = await s.load_journal("r1")
        # Cut before c (4): a, b's failed attempt (with its retry ahead); the sleep resolved
        # at 5 is not copied (nor its registration), nor anything later.
        run = await s.execute(_fork("f1", 4))
        assert run.forked_from == {"run_id": "r1"} and run.status is st.RunStatus.PENDING
        cut = await s.load_journal("f1")
        assert [(a.step_id, a.attempt, a.journal_seq) for a in cut.attempts] == [
            ("a", 1, 1), ("b", 1, 2)]
        assert cut.steps[1].retry_at == 3.0 and cut.waitpoints == ()
        # The whole journal: b's two attempts, c, the sleep and the token (renamed); not d (in
        # flight) nor e (a final failure): they run again.
        await s.execute(_fork("f2", None))
        whole = await s.load_journal("f2")
        assert [(a.step_id, a.attempt) for a in whole.attempts] == [
            ("a", 1), ("b", 1), ("b", 2), ("c", 1)]
        assert [(w.wp_id, w.token_id, w.meta) for w in whole.waitpoints] == [
            ("sleep:0", None, None), ("token:tok_new", "tok_new", {"token_id": "tok_new"})]
        seqs = sorted([a.journal_seq for a in whole.attempts]
                      + [w.journal_seq for w in whole.waitpoints]
                      + [w.resolved_journal_seq for w in whole.waitpoints])
        assert seqs == list(range(1, 9))
        assert (await s.get_run("f2")).started_at == before.run.started_at  # type: ignore[union-attr]
        # The original is untouched; a taken run id is refused.
        assert await s.load_journal("r1") == before
        with pytest.raises(st.InvalidOperation):
            await s.execute(_fork("f1", None))
        with pytest.raises(st.NotFound):
            await s.execute(_fork("f3", None, source="nope"))


async def test_amend_checks_the_frontier_and_appends_an_audit_row(tmp_path: Path) -> None:
    async with st.SQLiteStorage.open(tmp_path / "wf.db") as s:
        await make_run(s, "r1")
        await s.execute(st.RecordStepAttempt("r1", "a", 1, DONE, output=1, finished_at=1.0))
        await s.execute(st.RecordStepAttempt("r1", "b", 1, FAILED, position=1, finished_at=2.0,
                                             retry_at=60.0, error={"code": "X"}))
        await s.execute(st.RegisterWaitpoint("r1", "retry:b:1", st.WaitpointKind.DATETIME, 2.0,
                                             due_at=60.0, timer_kind=st.TimerKind.RETRY))
        await s.execute(st.UpdateRun("r1", 2.0, status=st.RunStatus.WAITING))
        with pytest.raises(st.InvalidOperation) as later:
            await s.execute(st.AmendStep("r1", "a", 5, "wrong step", 3.0))
        assert later.value.data["code"] == "NOT_FRONTIER"
        assert later.value.data["later"] == [{"type": "step", "id": "b", "seq": 2},
                                             {"type": "waitpoint", "id": "retry:b:1", "seq": 3}]
        with pytest.raises(st.NotFound):
            await s.execute(st.AmendStep("r1", "zz", 5, "unknown", 3.0))
        done = await s.execute(st.AmendStep("r1", "b", {"v": 2}, "by hand", 3.0, peer_uid=7))
        assert done.woken and done.run.needs_resume
        journal = await s.load_journal("r1")
        assert journal.steps[1].status is DONE and journal.steps[1].output == {"v": 2}
        assert journal.waitpoints == () and await s.next_timer_due() is None
        (row,) = journal.amendments
        assert (row.seq, row.step_id, row.peer_uid, row.reason) == (1, "b", 7, "by hand")
        assert row.old == {"status": "failed", "attempt": 1, "output": None,
                           "error": {"code": "X"}}
        assert row.new == {"status": "completed", "output": {"v": 2}}
        await s.execute(st.UpdateRun("r1", 4.0, status=st.RunStatus.RUNNING))
        with pytest.raises(st.InvalidOperation) as running:
            await s.execute(st.AmendStep("r1", "b", 3, "running", 5.0))
        assert running.value.data["code"] == "RUN_NOT_ACTIVE"
    conn = sqlite3.connect(tmp_path / "wf.db")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        conn.execute("UPDATE run_amendments SET reason = 'rewritten'")
    conn.close()
