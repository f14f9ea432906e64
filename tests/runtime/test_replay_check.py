"""``runtime.testing.replay_check`` and the ``wf-journal/1`` format: a run exported by one
version of a workflow replays (or not) against another, from pytest, with no daemon."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import orjson
import pytest

from runtime import journal_file, workflow
from runtime.journal import StepAttempt, WaitpointRegistered, WaitpointResolved
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
