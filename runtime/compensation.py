"""Running registered compensations, newest first, each once (SPEC §2 ``ctx.group``,
``ctx.compensate``, and a failed body with compensations registered)."""

from __future__ import annotations

import asyncio
from typing import Any

from runtime import _signals, calls, errors
from runtime._state import Compensable, HostJob, RunState
from runtime.journal import CompensationRan


async def run_compensations(state: RunState, from_index: int = 0) -> list[CompensationRan]:
    """Run registered compensations from ``from_index`` on, newest first, once each."""
    batch = state.compensable[from_index:]
    del state.compensable[from_index:]
    reports: list[CompensationRan] = []
    for item in reversed(batch):
        done = state.journal.compensations.get(item.step_id)
        if done is None:
            done = await state.on_host(_compensate, state, item)
        reports.append(done)
    return reports


async def _compensate(job: HostJob, state: RunState, item: Compensable) -> CompensationRan:
    """On the host: call the compensation, then record how it went (one hop for both)."""
    error: dict[str, Any] | None = None
    try:
        await calls.call(state.host, item.fn, (item.output,), timeout=None, step_id=item.step_id)
    except asyncio.CancelledError as exc:
        if job.stopped:
            raise
        error = errors.serialize_error(exc)  # raised by the user's function, not by us
    except _signals.InternalSignal:
        raise
    except BaseException as exc:  # SystemExit and friends fail only this run
        error = errors.serialize_error(exc)
    entry = CompensationRan(
        step_id=item.step_id,
        status="err" if error else "ok",
        error=error,
        finished_at=state.host.clock.now(),
    )
    job.hold()
    await state.commit(entry)
    return entry
