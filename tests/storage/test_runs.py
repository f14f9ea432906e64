from __future__ import annotations

import pytest

import storage as st
from tests.storage.conftest import make_run


async def test_create_run_returns_the_stored_record(storage: st.Storage) -> None:
    created = await storage.create_run(
        st.CreateRun(
            run_id="r1", workflow_id="wf", created_at=10.0, input={"a": [1, 2]},
            tags=("x", "y", "x"), priority=3, workflow_version="v1", triggered_by="cli",
        )
    )
    assert created.created
    run = created.run
    assert (run.run_id, run.status, run.input, run.tags) == ("r1", "pending", {"a": [1, 2]},
                                                             ("x", "y"))
    assert await storage.get_run("r1") == run
    assert str(run.status) == "pending"


async def test_create_run_is_idempotent_by_run_id(storage: st.Storage) -> None:
    first = await make_run(storage, "r1", input=1)
    again = await storage.create_run(st.CreateRun(run_id="r1", workflow_id="wf",
                                                  created_at=99.0, input=2))
    assert not again.created
    assert again.run == first


async def test_create_run_is_idempotent_by_workflow_and_key(storage: st.Storage) -> None:
    first = await make_run(storage, "r1", idempotency_key="k")
    again = await storage.create_run(
        st.CreateRun(run_id="r2", workflow_id="wf", created_at=2.0, idempotency_key="k")
    )
    assert (again.created, again.run.run_id) == (False, first.run_id)
    other_wf = await storage.create_run(
        st.CreateRun(run_id="r3", workflow_id="other", created_at=2.0, idempotency_key="k")
    )
    assert other_wf.created
    assert await storage.get_run("r2") is None


async def test_delayed_run_gets_a_start_timer(storage: st.Storage) -> None:
    await make_run(storage, "r1", scheduled_at=500.0)
    timers = await storage.due_timers(1e12, 10)
    assert [(t.timer_id, t.kind, t.due_at) for t in timers] == [("start:r1", "start", 500.0)]


async def test_update_run_changes_only_given_fields(storage: st.Storage) -> None:
    await make_run(storage, "r1", input={"x": 1})
    await storage.execute(st.UpdateRun("r1", at=5.0, status=st.RunStatus.RUNNING, started_at=5.0,
                                       add_compute_seconds=1.5))
    await storage.execute(st.UpdateRun("r1", at=6.0, output={"ok": True}, diverged=True,
                                       recoveries=2, add_compute_seconds=1.0))
    run = await storage.get_run("r1")
    assert run is not None
    assert (run.status, run.started_at, run.output, run.input) == ("running", 5.0, {"ok": True},
                                                                    {"x": 1})
    assert (run.diverged, run.recoveries, run.compute_seconds, run.updated_at) == (True, 2, 2.5,
                                                                                    6.0)
    await storage.execute(st.UpdateRun("r1", at=7.0, finished_at=None, error={"code": "X"}))
    run = await storage.get_run("r1")
    assert run is not None and run.error == {"code": "X"} and run.finished_at is None


async def test_update_unknown_run_raises_not_found(storage: st.Storage) -> None:
    with pytest.raises(st.NotFound, match="nope"):
        await storage.execute(st.UpdateRun("nope", at=1.0, status=st.RunStatus.FAILED))


async def test_list_runs_filters_and_orders_newest_first(storage: st.Storage) -> None:
    await make_run(storage, "a", workflow_id="w1", created_at=1.0, tags=("t",))
    await make_run(storage, "b", workflow_id="w2", created_at=2.0, tags=("t", "u"))
    await make_run(storage, "c", workflow_id="w1", created_at=3.0)
    await storage.execute(st.UpdateRun("c", at=4.0, status=st.RunStatus.COMPLETED))

    async def ids(**kw: object) -> list[str]:
        return [r.run_id for r in await storage.list_runs(**kw)]  # type: ignore[arg-type]

    assert await ids() == ["c", "b", "a"]
    assert await ids(limit=2) == ["c", "b"]
    assert await ids(workflow_id="w1") == ["c", "a"]
    assert await ids(tag="t") == ["b", "a"]
    assert await ids(tag="u", workflow_id="w2") == ["b"]
    assert await ids(status=st.RunStatus.COMPLETED) == ["c"]
    assert await ids(status=st.RunStatus.PENDING, tag="t") == ["b", "a"]
    assert [r.run_id for r in await storage.non_terminal_runs()] == ["a", "b"]


async def test_child_run_and_parent_invoke_waitpoint_commit_together(storage: st.Storage) -> None:
    await make_run(storage, "parent")
    op = st.CreateChildRun(
        child=st.CreateRun(run_id="parent/child:0", workflow_id="child", created_at=2.0,
                           parent_run_id="parent", root_run_id="parent"),
        invoke=st.RegisterWaitpoint(run_id="parent", wp_id="invoke:child:0",
                                    kind=st.WaitpointKind.RUN, registered_at=2.0,
                                    meta={"child_run_id": "parent/child:0"}),
    )
    first = await storage.execute(op)
    again = await storage.execute(op)
    assert first.created and not again.created
    assert first.run == again.run and first.run.parent_run_id == "parent"
    assert first.waitpoint == again.waitpoint
    assert first.waitpoint is not None and first.waitpoint.is_waiting


async def test_failed_child_creation_rolls_back_the_whole_op(storage: st.Storage) -> None:
    """A batch is all or nothing: the child run is not left behind without its parent entry."""
    op = st.CreateChildRun(
        child=st.CreateRun(run_id="orphan", workflow_id="child", created_at=2.0),
        invoke=st.RegisterWaitpoint(run_id="missing-parent", wp_id="invoke:child:0",
                                    kind=st.WaitpointKind.RUN, registered_at=2.0),
    )
    with pytest.raises(st.StorageError):
        await storage.execute(op)
    assert await storage.get_run("orphan") is None


async def test_counts_report_rows_by_kind(storage: st.Storage) -> None:
    await make_run(storage, "a")
    await make_run(storage, "b")
    await storage.execute(st.UpdateRun("b", at=2.0, status=st.RunStatus.FAILED))
    await storage.execute(st.UpsertTimer("t1", st.TimerKind.SCHEDULE, 5.0, created_at=1.0))
    counts = await storage.counts()
    assert counts.runs_by_status == {"pending": 1, "failed": 1}
    assert counts.timers == 1 and counts.events == 0
