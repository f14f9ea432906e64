"""What the daemon needs to resume runs exactly: retry times, parent links, the resume flag."""

from __future__ import annotations

import storage as st
from tests.storage.conftest import make_run

FAILED = st.StepStatus.FAILED


async def test_retry_at_of_every_failed_attempt_survives(storage: st.Storage) -> None:
    await make_run(storage, "r1")
    for attempt in (1, 2):
        await storage.execute(st.RecordStepAttempt(
            "r1", "s", attempt, FAILED, error={"code": "E"}, started_at=1.0,
            finished_at=2.0, retry_at=10.0 * attempt))
    journal = await storage.load_journal("r1")
    assert [(a.attempt, a.retry_at) for a in journal.attempts] == [(1, 10.0), (2, 20.0)]
    assert journal.steps[0].retry_at == 20.0


async def test_child_run_keeps_the_parent_waitpoint_it_resolves(storage: st.Storage) -> None:
    await make_run(storage, "parent")
    child = await make_run(storage, "child", parent_run_id="parent", parent_wp_id="invoke:c:0")
    assert child.parent_wp_id == "invoke:c:0"
    assert (await storage.get_run("child")).parent_wp_id == "invoke:c:0"  # type: ignore[union-attr]


async def test_resolution_sets_needs_resume_and_running_clears_it(storage: st.Storage) -> None:
    await make_run(storage, "r1")
    await storage.execute(st.RegisterWaitpoint("r1", "signal:go:0", st.WaitpointKind.SIGNAL,
                                               1.0, signal_name="go"))
    await storage.execute(st.UpdateRun("r1", at=2.0, status=st.RunStatus.WAITING))
    assert not (await storage.get_run("r1")).needs_resume  # type: ignore[union-attr]
    sent = await storage.send_signal(st.SendSignal("r1", "go", {"x": 1}, 3.0))
    assert sent.delivered
    assert (await storage.get_run("r1")).needs_resume  # type: ignore[union-attr]
    await storage.execute(st.UpdateRun("r1", at=4.0, status=st.RunStatus.WAITING))
    assert (await storage.get_run("r1")).needs_resume  # type: ignore[union-attr]
    await storage.execute(st.UpdateRun("r1", at=5.0, status=st.RunStatus.RUNNING))
    assert not (await storage.get_run("r1")).needs_resume  # type: ignore[union-attr]


async def test_journal_counts_the_metadata_ops_a_run_emitted(storage: st.Storage) -> None:
    await make_run(storage, "r1")
    assert (await storage.load_journal("r1")).metadata_ops == 0
    for index in range(3):
        await storage.execute(st.ApplyMetadata("r1", "r1", index, st.MetadataOpKind.INCREMENT,
                                               "n", 1))
    journal = await storage.load_journal("r1")
    assert journal.metadata_ops == 3 and journal.metadata == {"n": 3}
