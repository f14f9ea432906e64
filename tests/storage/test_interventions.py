"""The storage side of run operations: cancel and pause requests on the run, resume, retry
(what it keeps, reopens and archives), paused workflows, and the run filter of ``bulk``."""

from __future__ import annotations

import pytest

import storage as st
from tests.storage.conftest import make_run

RUNNING, WAITING, PAUSED = st.RunStatus.RUNNING, st.RunStatus.WAITING, st.RunStatus.PAUSED


async def get(s: st.Storage, run_id: str) -> st.RunRecord:
    run = await s.get_run(run_id)
    assert run is not None
    return run


async def step(s: st.Storage, run_id: str, step_id: str, position: int, *, ok: bool = True,
               attempt: int = 1) -> None:
    await s.execute(st.RecordStepAttempt(
        run_id, step_id, attempt,
        st.StepStatus.COMPLETED if ok else st.StepStatus.FAILED, position=position,
        output=step_id if ok else None, error=None if ok else {"code": "BOOM"},
        started_at=10.0, finished_at=11.0))


async def end(s: st.Storage, run_id: str, status: st.RunStatus) -> None:
    await s.execute(st.UpdateRun(run_id, at=20.0, status=status, finished_at=20.0,
                                 error={"code": "X"}))


async def test_the_first_cancel_request_wins_and_an_ended_run_is_left_alone(
    storage: st.Storage,
) -> None:
    await make_run(storage, "r")
    first = await storage.execute(st.RequestCancel("r", 5.0, "first", compensate=False))
    assert first.cancel_requested == {"reason": "first", "compensate": False,
                                      "code": "CANCELLED", "at": 5.0}
    await storage.execute(st.RequestCancel("r", 6.0, "second"))
    assert (await get(storage, "r")).cancel_requested["reason"] == "first"
    await make_run(storage, "done")
    await end(storage, "done", st.RunStatus.COMPLETED)
    assert (await storage.execute(st.RequestCancel("done", 7.0))).cancel_requested is None
    with pytest.raises(st.NotFound):
        await storage.execute(st.RequestCancel("nope", 1.0))


async def test_child_cancels_reach_only_attached_children_that_have_not_ended(
    storage: st.Storage,
) -> None:
    await make_run(storage, "p")
    await make_run(storage, "attached", parent_run_id="p", parent_wp_id="invoke:c:0")
    await make_run(storage, "detached", parent_run_id="p")
    await make_run(storage, "ended", parent_run_id="p", parent_wp_id="invoke:c:1")
    await end(storage, "ended", st.RunStatus.FAILED)
    flagged = await storage.execute(st.RequestChildCancels("p", 3.0, "parent cancelled"))
    assert [c.run_id for c in flagged] == ["attached"]
    assert (await get(storage, "attached")).cancel_requested["reason"] == "parent cancelled"
    assert (await get(storage, "detached")).cancel_requested is None


async def test_pause_parks_a_waiting_run_paused_and_only_flags_the_others(
    storage: st.Storage,
) -> None:
    for run_id, status in (("w", WAITING), ("r", RUNNING)):
        await make_run(storage, run_id)
        await storage.execute(st.UpdateRun(run_id, at=2.0, status=status))
    await make_run(storage, "p")
    assert (await storage.execute(st.RequestPause("w", 3.0))).status is PAUSED
    for run_id, status in (("r", RUNNING), ("p", st.RunStatus.PENDING)):
        paused = await storage.execute(st.RequestPause(run_id, 3.0))
        assert (paused.status, paused.paused) == (status, True)
    assert (await get(storage, "w")).paused
    await storage.execute(st.UpdateRun("r", at=4.0, status=st.RunStatus.CANCELLED))
    assert not (await get(storage, "r")).paused  # an ended run is not paused


async def test_resume_sets_a_paused_run_waiting_with_its_resume_flag(
    storage: st.Storage,
) -> None:
    await make_run(storage, "w")
    await storage.execute(st.UpdateRun("w", at=2.0, status=WAITING))
    await storage.execute(st.RequestPause("w", 3.0))
    resumed = await storage.execute(st.ResumeRun("w", 4.0, WAITING))
    assert (resumed.status, resumed.paused, resumed.needs_resume) == (WAITING, False, True)
    assert await get(storage, "w") == resumed
    with pytest.raises(st.InvalidOperation) as info:
        await storage.execute(st.ResumeRun("w", 5.0, WAITING))
    assert info.value.data["status"] == "waiting"


async def test_workflow_pauses_are_stored(storage: st.Storage) -> None:
    assert await storage.execute(st.SetWorkflowPaused("b", True, 1.0))
    assert await storage.execute(st.SetWorkflowPaused("a", True, 1.0))
    assert not await storage.execute(st.SetWorkflowPaused("a", True, 2.0))
    assert await storage.paused_workflows() == ["a", "b"]
    assert await storage.execute(st.SetWorkflowPaused("a", False, 3.0))
    assert await storage.paused_workflows() == ["b"]


async def test_retry_resume_keeps_done_steps_and_reopens_what_the_end_closed(
    storage: st.Storage,
) -> None:
    await make_run(storage, "r")
    await storage.execute(st.UpdateRun("r", at=9.0, status=RUNNING, started_at=9.0,
                                       add_compute_seconds=3.0))
    await step(storage, "r", "kept", 0)
    await step(storage, "r", "undone", 1)
    await step(storage, "r", "broke", 2, ok=False)
    await storage.execute(st.RecordCompensation("r", "undone", st.CompensationStatus.COMPLETED,
                                                19.0))
    await storage.execute(st.RegisterWaitpoint("r", "sleep:0", st.WaitpointKind.DATETIME, 12.0,
                                               due_at=500.0))
    await end(storage, "r", st.RunStatus.COMPENSATED)
    assert (await storage.due_timers(1e12, 10)) == []  # the end removed it

    (again,) = (await storage.execute(st.RetryRun("r", 30.0, "resume"))).runs
    assert (again.status, again.attempt, again.started_at) == ("pending", 1, 9.0)
    assert (again.error, again.finished_at, again.compute_seconds) == (None, None, 0.0)
    journal = await storage.load_journal("r")
    steps = {s.step_id: s for s in journal.steps}
    assert set(steps) == {"kept", "broke"}  # the compensated step runs again
    assert steps["broke"].retry_at == 30.0  # its final failure is retried now
    wps = {w.wp_id: w for w in journal.waitpoints}
    assert wps["retry:broke:1"].status is st.WaitpointStatus.RESOLVED
    # Its registration takes the run's next number (after kept, undone, broke, the
    # compensation and sleep:0); it is written resolved, so no resolution entry of its own.
    assert (wps["retry:broke:1"].journal_seq, wps["retry:broke:1"].resolved_journal_seq) == (
        6, None)
    assert wps["sleep:0"].status is st.WaitpointStatus.WAITING
    assert [t.timer_id for t in await storage.due_timers(1e12, 10)] == ["wp:r:sleep:0"]
    assert journal.compensations == ()
    (archive,) = await storage.run_archives("r")
    assert (archive.mode, archive.status, archive.attempt) == ("resume", "compensated", 1)
    assert [s["step_id"] for s in archive.journal["undone_steps"]] == ["undone"]
    assert archive.journal["failed_steps"][0]["step_id"] == "broke"


async def test_retry_resume_retries_a_failed_child_and_takes_a_completed_childs_output(
    storage: st.Storage,
) -> None:
    await make_run(storage, "p")
    for n, child_status in enumerate((st.RunStatus.CANCELLED, st.RunStatus.COMPLETED)):
        wp = f"invoke:c:{n}"
        await storage.execute(st.CreateChildRun(
            st.CreateRun(run_id=f"c{n}", workflow_id="c", created_at=2.0, parent_run_id="p",
                         parent_wp_id=wp),
            st.RegisterWaitpoint("p", wp, st.WaitpointKind.RUN, 2.0,
                                 meta={"child_run_id": f"c{n}"})))
        await storage.execute(st.UpdateRun(f"c{n}", at=3.0, status=child_status,
                                           output=f"out{n}"))
    await end(storage, "p", st.RunStatus.CANCELLED)  # both waits cancelled
    retried = await storage.execute(st.RetryRun("p", 30.0, "resume"))
    assert [r.run_id for r in retried.runs] == ["p", "c0"]
    wps = {w.wp_id: w for w in (await storage.load_journal("p")).waitpoints}
    assert wps["invoke:c:0"].status is st.WaitpointStatus.WAITING
    assert (wps["invoke:c:1"].status, wps["invoke:c:1"].payload) == ("resolved", "out1")


async def test_retry_retrigger_archives_the_whole_journal_and_starts_the_next_attempt(
    storage: st.Storage,
) -> None:
    await make_run(storage, "r")
    await storage.execute(st.UpdateRun("r", at=9.0, status=RUNNING, started_at=9.0))
    await step(storage, "r", "a", 0)
    await storage.execute(st.RegisterWaitpoint("r", "token:t", st.WaitpointKind.MANUAL, 12.0,
                                               token_id="t"))
    await storage.execute(st.ApplyMetadata("r", "r", 0, st.MetadataOpKind.SET, "k", 1))
    await end(storage, "r", st.RunStatus.FAILED)
    (again,) = (await storage.execute(st.RetryRun("r", 30.0, "retrigger"))).runs
    assert (again.attempt, again.started_at, again.status) == (2, None, "pending")
    journal = await storage.load_journal("r")
    assert (journal.steps, journal.waitpoints, dict(journal.metadata)) == ((), (), {})
    assert journal.metadata_ops == 0  # the new attempt's metadata ops apply again
    assert await storage.get_token("t") is None  # the new attempt may reserve it again
    (archive,) = await storage.run_archives("r")
    assert [s["step_id"] for s in archive.journal["steps"]] == ["a"]
    assert archive.journal["metadata"] == {"k": 1}
    with pytest.raises(st.InvalidOperation) as info:
        await storage.execute(st.RetryRun("r", 31.0, "retrigger"))
    assert info.value.data["status"] == "pending"


async def test_list_runs_filters_by_creation_time_and_may_return_all(
    storage: st.Storage,
) -> None:
    for n in range(5):
        await make_run(storage, f"r{n}", created_at=float(n))
    found = await storage.list_runs(since=1.0, until=4.0, limit=None)
    assert [r.run_id for r in found] == ["r3", "r2", "r1"]
    assert len(await storage.list_runs(limit=None)) == 5


async def test_a_child_resolves_only_the_parent_wait_that_waits_on_it(
    storage: st.Storage,
) -> None:
    await make_run(storage, "p")
    await storage.execute(st.CreateChildRun(
        st.CreateRun(run_id="new", workflow_id="c", created_at=2.0, parent_run_id="p",
                     parent_wp_id="invoke:c:0"),
        st.RegisterWaitpoint("p", "invoke:c:0", st.WaitpointKind.RUN, 2.0,
                             meta={"child_run_id": "new"})))
    # An older child under the same wait id (the parent was retried from scratch) ends: no.
    assert not await storage.execute(st.ResolveWaitpoint(
        "p", "invoke:c:0", 3.0, st.ResolutionSource.LIVE, child_run_id="old"))
    # The child ends without ever starting: its parent's wait resolves with the error given.
    ended = await storage.execute(st.EndPending("new", 4.0, st.RunStatus.CANCELLED,
                                                parent_error={"code": "CANCELLED"}))
    assert ended is not None
    wp = await storage.get_waitpoint("p", "invoke:c:0")
    assert wp is not None and (wp.status, wp.error) == ("resolved", {"code": "CANCELLED"})
    assert (await get(storage, "p")).needs_resume
