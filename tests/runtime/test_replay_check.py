"""``runtime.testing.replay_check`` and the ``wf-journal/1`` format: a run exported by one
version of a workflow replays (or not) against another, from pytest, with no daemon."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import orjson
import pytest

from runtime import journal_file, workflow
from runtime.journal import (
    CompensationRan,
    Entry,
    StepAttempt,
    StreamChunk,
    WaitpointRegistered,
    WaitpointResolved,
)
from runtime.status import ResolutionSource, WaitpointKind
from runtime.testing import replay_check
from runtime.workflow import Registry, definition_of

T0 = 1_700_000_000.0


def exported(tmp_path: Path, workflow_id: str = "rc.order") -> Path:
    entries = [
        (1, StepAttempt("reserve", 0, 1, "ok", "r", None, T0, T0 + 1)),
        (2, WaitpointRegistered("sleep:0", WaitpointKind.DATETIME, T0 + 1, due_at=T0 + 61)),
        (3, WaitpointResolved("sleep:0", WaitpointKind.DATETIME, T0 + 61,
                              ResolutionSource.LIVE)),
    ]
    run = {"run_id": "r1", "workflow_id": workflow_id, "status": "waiting",
           "input": {"n": 1}, "created_at": T0, "started_at": T0}
    doc = journal_file.document([journal_file.run_json(run, entries, {}, 0)],
                                engine="wf test", exported_at=T0)
    path = tmp_path / "runs.json"
    path.write_bytes(orjson.dumps(doc))
    return path


def registry_of(wf: Any) -> Registry:
    """A registry where ``wf`` is the code of workflow ``rc.order`` (two versions of one
    workflow cannot both be in the process-wide registry)."""
    registry = Registry()
    registry.register(dataclasses.replace(definition_of(wf), id="rc.order"))
    return registry


@workflow(id="rc.order-same")
async def same(input: dict, ctx) -> str:
    await ctx.step("reserve", lambda: "r")
    await ctx.sleep(60)
    return await ctx.step("ship", lambda: "s")


@workflow(id="rc.order-longer")
async def longer_sleep(input: dict, ctx) -> str:
    await ctx.step("reserve", lambda: "r")
    await ctx.sleep(120)
    return await ctx.step("ship", lambda: "s")


async def test_a_run_replays_against_code_that_follows_its_journal(tmp_path: Path) -> None:
    (result,) = await replay_check([exported(tmp_path)], registry=registry_of(same))
    assert result["result"] == "ok" and result["run_id"] == "r1"


async def test_a_changed_sleep_fails_the_check_naming_the_run_and_the_entry(
    tmp_path: Path,
) -> None:
    with pytest.raises(AssertionError) as err:
        await replay_check(exported(tmp_path), registry=registry_of(longer_sleep))
    assert "r1 (rc.order): diverged" in str(err.value) and "sleep:0" in str(err.value)


async def test_a_run_of_an_unregistered_workflow_is_reported_not_crashed(
    tmp_path: Path,
) -> None:
    with pytest.raises(AssertionError, match=r"'rc\.gone' is not registered"):
        await replay_check([exported(tmp_path, "rc.gone")], registry=registry_of(same))


def test_an_export_round_trips_every_entry_kind(tmp_path: Path) -> None:
    (run,) = journal_file.load(exported(tmp_path))
    assert [seq for seq, _ in run.entries] == [1, 2, 3]
    assert run.journal().resolutions["sleep:0"].resolved_at == T0 + 61
    assert run.facts("v").workflow_version == "v"


def test_every_exported_entry_kind_reads_back_equal(tmp_path: Path) -> None:
    entries: list[tuple[int, Entry]] = [
        (1, StepAttempt("patch:fraud", 0, 1, "ok", True, None, T0, T0)),
        (2, StepAttempt("pay", 1, 1, "err", None, {"code": "X", "message": "m"}, T0, T0 + 1,
                        retry_at=T0 + 5)),
        (3, WaitpointRegistered("retry:pay:1", WaitpointKind.DATETIME, T0 + 1, due_at=T0 + 5)),
        (4, WaitpointResolved("retry:pay:1", WaitpointKind.DATETIME, T0 + 5,
                              ResolutionSource.LIVE)),
        (5, StepAttempt("pay", 1, 2, "ok", {"paid": 1}, None, T0 + 5, T0 + 6)),
        (6, WaitpointRegistered("event:paid:0", WaitpointKind.EVENT, T0 + 6,
                                timeout_at=T0 + 66, meta={"event_type": "paid",
                                                          "match": {"order": 1}})),
        (7, WaitpointResolved("event:paid:0", WaitpointKind.EVENT, T0 + 7,
                              ResolutionSource.INBOX, {"order": 1}, matched_event_id="e1")),
        (8, StreamChunk("out", 0, "text", "hello", True, T0 + 8)),
        (9, CompensationRan("pay", "ok", None, T0 + 9)),
    ]
    run = {"run_id": "r1", "workflow_id": "rc.order", "input": None}
    doc = journal_file.document([journal_file.run_json(run, entries, {"k": 1}, 2)],
                                engine="wf test", exported_at=T0)
    path = tmp_path / "kinds.json"
    path.write_bytes(orjson.dumps(doc))
    (back,) = journal_file.load(path)
    assert list(back.entries) == entries
    assert (back.metadata, back.metadata_ops) == ({"k": 1}, 2)
    assert [e["type"] for e in doc["runs"][0]["entries"]] == [
        "step", "step", "waitpoint", "resolution", "step", "waitpoint", "resolution", "stream",
        "compensation"]


@pytest.mark.parametrize(("doc", "message"), [
    (b"{", "not JSON"),
    (b"[]", "a JSON object is expected"),
    (b'{"format": "wf-journal/1"}', "field 'runs' is missing"),
    (b'{"format": "wf-journal/1", "runs": [{"run": {"run_id": "r", "workflow_id": "w"}, '
     b'"entries": [{"seq": 1, "type": "mystery"}]}]}', "unknown entry type 'mystery'"),
    (b'{"format": "wf-journal/1", "runs": [{"run": {"run_id": "r", "workflow_id": "w"}, '
     b'"entries": [{"seq": 1, "type": "step"}]}]}', "field 'step_id' is missing"),
])
def test_a_malformed_export_names_the_file_and_the_problem(
    tmp_path: Path, doc: bytes, message: str
) -> None:
    path = tmp_path / "bad.json"
    path.write_bytes(doc)
    with pytest.raises(journal_file.JournalFileError) as err:
        journal_file.load(path)
    assert str(err.value).startswith(str(path)) and message in str(err.value)
