"""Regression test (found by the fsync audit's workload): a resolution that reaches a blocked
body while ``Execution.advance()`` is probing for idleness is applied, but ``advance()`` still
reports WAITING. The actor parks the run and commits ``waiting``; the body then runs on with no
one advancing it: its next steps are recorded, its end is not, and the run stays ``waiting``
with a resolved waitpoint until the daemon restarts.

Cause, then: ``Execution.resolve`` woke the blocked future without counting it as activity, so
the pending idle probe (``_IDLE_TURNS`` quiet loop turns) could finish before the woken body ran.
The probe is gone (the body runs on its own loop, and a resolution makes it ready, which the
driver sees); the test stays, over a range of delivery delays.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest

from runtime import Context, workflow
from runtime.executor import Execution
from runtime.facts import HostServices, RunFacts
from runtime.journal import Entry, Journal, WaitpointRegistered, WaitpointResolved
from runtime.status import ResolutionSource, RunStatus

TOKEN = "race-token"


@workflow(id="rel-race-token", description="Wait for a token, then one step.")
async def _token_then_step(input: Any, ctx: Context) -> str:
    await (await ctx.wait_for_token(TOKEN)).wait()
    return str(await ctx.step("after", lambda: "after"))


def _after_turns(loop: asyncio.AbstractEventLoop, turns: int, fn: Any, *args: Any) -> None:
    if turns == 0:
        fn(*args)
    else:
        loop.call_soon(_after_turns, loop, turns - 1, fn, *args)


async def _advance_with_resolution_during_idle_probe(turns: int) -> tuple[RunStatus, bool, bool]:
    """(what advance() said, whether the resolution reached it while it ran, whether the body
    then finished on its own)."""
    loop = asyncio.get_running_loop()
    execution: Execution
    advancing: asyncio.Task[Any] | None = None
    delivered = False

    def post(resolution: WaitpointResolved) -> None:
        # As RunActor.post: while advance() runs, the resolution is applied at once; after it
        # returned it would wait in the mailbox for the next advance(), so it is not sent here.
        nonlocal delivered
        if advancing is not None and not advancing.done():
            delivered = True
            execution.resolve(resolution)

    async def record(entry: Entry) -> Sequence[WaitpointResolved]:
        if isinstance(entry, WaitpointRegistered):
            # complete_token lands a few loop turns after the registration committed: while the
            # body is blocked and advance() is counting idle turns.
            resolution = WaitpointResolved(entry.wp_id, entry.kind, 0.0, ResolutionSource.LIVE,
                                           payload={"ok": True})
            _after_turns(loop, turns, post, resolution)
        return ()

    execution = Execution(
        _token_then_step.__workflow__,  # type: ignore[attr-defined]
        None,
        RunFacts(run_id="race-run", workflow_id="rel-race-token", workflow_version="1",
                 started_at=0.0),
        Journal([]),
        HostServices(record=record),
    )
    advancing = loop.create_task(execution.advance())
    outcome = await advancing
    for _ in range(50):  # let a body that is still running finish
        await asyncio.sleep(0)
    done = execution.done
    await execution.close()
    return outcome.status, delivered, done


@pytest.mark.parametrize("turns", range(12))
def test_a_resolution_during_the_idle_probe_is_not_lost(turns: int) -> None:
    status, delivered, body_finished = asyncio.run(
        _advance_with_resolution_during_idle_probe(turns))
    # A resolution applied during advance() must not be followed by WAITING with the body
    # running on unobserved.
    assert not (delivered and status is RunStatus.WAITING and body_finished), (
        "advance() reported WAITING, then the body finished with no one advancing it: "
        "the run's end would never be committed"
    )
