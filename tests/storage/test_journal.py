from __future__ import annotations

import pytest

import storage as st
from tests.storage.conftest import make_run

DONE = st.StepStatus.COMPLETED
FAILED = st.StepStatus.FAILED


async def test_step_result_and_run_advance_commit_in_one_batch(storage: st.Storage) -> None:
    await make_run(storage, "r1")
    results = await storage.commit([
        st.RecordStepAttempt("r1", "fetch", 1, DONE, position=0, output={"v": 1},
                             started_at=1.0, finished_at=2.0, runtime="inline"),
        st.UpdateRun("r1", at=2.0, status=st.RunStatus.RUNNING, add_compute_seconds=1.0),
    ])
    assert results == [None, None]
    journal = await storage.load_journal("r1")
    assert journal.run.status == "running"
    [step] = journal.steps
    assert (step.step_id, step.attempt, step.status, step.output, step.runtime) == (
        "fetch", 1, "completed", {"v": 1}, "inline")


async def test_every_attempt_is_kept_and_the_step_shows_the_latest(storage: st.Storage) -> None:
    await make_run(storage, "r1")
    for attempt, status in [(1, FAILED), (2, FAILED), (3, DONE)]:
        await storage.execute(st.RecordStepAttempt(
            "r1", "s", attempt, status, output="ok" if status == DONE else None,
            error=None if status == DONE else {"code": "E", "attempt": attempt},
            started_at=float(attempt), finished_at=attempt + 0.5))
    # an older attempt arriving late never overwrites the newer one
    await storage.execute(st.RecordStepAttempt("r1", "s", 2, FAILED, error={"late": True}))
    journal = await storage.load_journal("r1")
    [step] = journal.steps
    assert (step.attempt, step.status, step.output) == (3, "completed", "ok")
    assert [(a.attempt, a.status) for a in journal.attempts] == [
        (1, "failed"), (2, "failed"), (3, "completed")]
    assert journal.attempts[0].error == {"code": "E", "attempt": 1}


async def test_rerecording_the_same_attempt_replaces_it(storage: st.Storage) -> None:
    await make_run(storage, "r1")
    await storage.execute(st.RecordStepAttempt("r1", "s", 1, st.StepStatus.RUNNING))
    await storage.execute(st.RecordStepAttempt("r1", "s", 1, DONE, output=7))
    journal = await storage.load_journal("r1")
    assert [(a.attempt, a.status, a.output) for a in journal.attempts] == [(1, "completed", 7)]


async def test_step_for_unknown_run_fails_only_that_caller(storage: st.Storage) -> None:
    await make_run(storage, "r1")
    with pytest.raises(st.NotFound):
        await storage.execute(st.RecordStepAttempt("ghost", "s", 1, DONE))
    with pytest.raises(st.NotFound):
        await storage.execute(st.RecordStepAttempt("ghost", "s", 2, DONE))


async def test_non_json_output_is_a_clear_error(storage: st.Storage) -> None:
    await make_run(storage, "r1")
    with pytest.raises(st.InvalidOperation, match="JSON"):
        await storage.execute(st.RecordStepAttempt("r1", "s", 2, DONE, output=object()))


async def test_compensations_are_listed_in_recorded_order(storage: st.Storage) -> None:
    await make_run(storage, "r1")
    await storage.execute(st.RecordCompensation("r1", "b", st.CompensationStatus.COMPLETED, 2.0))
    await storage.execute(st.RecordCompensation("r1", "a", st.CompensationStatus.FAILED, 3.0,
                                                error={"code": "X"}))
    journal = await storage.load_journal("r1")
    assert [(c.step_id, c.status, c.error) for c in journal.compensations] == [
        ("b", "completed", None), ("a", "failed", {"code": "X"})]


async def test_stream_chunks_are_idempotent_and_readable_after_a_seq(storage: st.Storage) -> None:
    await make_run(storage, "r1")
    for seq, final in [(0, False), (1, False), (2, True)]:
        op = st.AppendStreamChunk("r1", "out", seq, "text", f"c{seq}", final, at=float(seq))
        assert await storage.execute(op) is True
    assert await storage.execute(st.AppendStreamChunk("r1", "out", 1, "text", "dup", False, 9.0)
                                 ) is False
    chunks = await storage.stream_chunks("r1", "out", after_seq=0)
    assert [(c.seq, c.chunk, c.final) for c in chunks] == [(1, "c1", False), (2, "c2", True)]
    assert chunks[1].stream_id == "out"
    journal = await storage.load_journal("r1")
    assert journal.completed_streams == {"out"} and len(journal.stream_chunks) == 3


async def test_metadata_ops_apply_exactly_once_per_origin_index(storage: st.Storage) -> None:
    await make_run(storage, "parent")
    await make_run(storage, "child")
    M = st.MetadataOpKind
    emitted = [
        st.ApplyMetadata("child", "child", 0, M.SET, "stage", "a"),
        st.ApplyMetadata("child", "child", 1, M.INCREMENT, "n", 2),
        st.ApplyMetadata("child", "child", 2, M.INCREMENT, "n"),
        st.ApplyMetadata("child", "child", 3, M.APPEND, "log", {"x": 1}),
        st.ApplyMetadata("parent", "child", 4, M.SET, "child_stage", "b"),
        st.ApplyMetadata("child", "child", 5, M.SET, "gone", True),
        st.ApplyMetadata("child", "child", 6, M.REMOVE, "gone"),
    ]
    assert await storage.commit(emitted) == [True] * 7
    assert await storage.commit(emitted) == [False] * 7  # a replay re-emits them
    child = await storage.load_journal("child")
    assert child.metadata == {"stage": "a", "n": 3, "log": [{"x": 1}]}
    assert (await storage.load_journal("parent")).metadata == {"child_stage": "b"}


async def test_metadata_type_mismatch_is_invalid_operation(storage: st.Storage) -> None:
    await make_run(storage, "r1")
    M = st.MetadataOpKind
    await storage.execute(st.ApplyMetadata("r1", "r1", 0, M.SET, "k", "text"))
    with pytest.raises(st.InvalidOperation, match="increment"):
        await storage.execute(st.ApplyMetadata("r1", "r1", 1, M.INCREMENT, "k", 1))
    with pytest.raises(st.InvalidOperation, match="append"):
        await storage.execute(st.ApplyMetadata("r1", "r1", 1, M.APPEND, "k", 1))
    # the failed op was rolled back with its cursor: the same index can be applied later
    assert await storage.execute(st.ApplyMetadata("r1", "r1", 1, M.SET, "k", 5)) is True


async def test_load_journal_of_unknown_run_raises_not_found(storage: st.Storage) -> None:
    with pytest.raises(st.NotFound):
        await storage.load_journal("ghost")


async def test_schedules_and_rate_limits_upsert(storage: st.Storage) -> None:
    await storage.execute(st.UpsertSchedule("nightly", "wf", {"cron": "0 3 * * *"}, 1.0, 10.0))
    await storage.execute(st.UpsertSchedule("nightly", "wf", {"cron": "0 4 * * *"}, 2.0, 20.0,
                                            last_fire_at=10.0))
    await storage.execute(st.UpsertSchedule("a", "wf2", {"every": 60}, 1.0))
    assert [(s.name, s.spec, s.next_fire_at, s.last_fire_at)
            for s in await storage.list_schedules()] == [
        ("a", {"every": 60}, None, None), ("nightly", {"cron": "0 4 * * *"}, 20.0, 10.0)]
    assert await storage.execute(st.DeleteSchedule("a")) is True
    assert await storage.execute(st.DeleteSchedule("a")) is False
    assert await storage.get_rate_limit("k") is None
    await storage.execute(st.PutRateLimit("k", 3.5, 1.0))
    await storage.execute(st.PutRateLimit("k", 2.0, 2.0))
    assert await storage.get_rate_limit("k") == st.RateLimitState("k", 2.0, 2.0)
