"""``ctx.patched(id)`` / ``ctx.deprecate_patch(id)`` (SPEC §14): change a workflow's behaviour
for new runs while runs recorded on the old code replay the old way.

A patch marker is a step record ``patch:ID`` (output ``true``). ``patched``: a recorded marker
→ True; otherwise, once every branch consumed what it could of the journal (the frontier), no
recorded entry left → the marker is recorded, True; recorded entries left (a later step, a
waitpoint registered or resolved after this point: the run got past here on old code) → False.
The answer is memoized per execution. ``deprecate_patch`` consumes a marker when there is one
and never records one, so it accepts journals with and without it.
"""

from __future__ import annotations

from runtime._state import PATCH_PREFIX, RunState
from runtime.journal import StepAttempt


def _check_id(patch_id: str) -> str:
    if not isinstance(patch_id, str) or not patch_id:
        raise ValueError(f"patch id must be a non-empty string, got {patch_id!r}")
    return PATCH_PREFIX + patch_id


def _consume(ex: RunState, step_id: str) -> bool:
    """Take the recorded marker ``step_id`` if there is one (it holds a step position)."""
    if step_id not in ex.journal.steps:
        return False
    if step_id not in ex.consumed_steps:
        ex.consumed_steps.add(step_id)
        ex.seen_steps.add(step_id)
        ex.step_position += 1
    return True


async def patched(ex: RunState, patch_id: str) -> bool:
    step_id = _check_id(patch_id)
    known = ex.patches.get(patch_id)
    if known is not None:
        return known
    if _consume(ex, step_id):
        ex.patches[patch_id] = True
        return True
    ex.check_live()
    if not await ex.at_frontier({"patch": patch_id}):
        ex.patches[patch_id] = False
        return False
    if _consume(ex, step_id):  # a sibling branch recorded it while this one waited
        ex.patches[patch_id] = True
        return True
    now = ex.host.clock.now()
    position = ex.step_position
    ex.step_position += 1
    ex.seen_steps.add(step_id)
    await ex.record(StepAttempt(step_id, position, 1, "ok", True, None, now, now))
    ex.patches[patch_id] = True
    return True


def deprecate_patch(ex: RunState, patch_id: str) -> None:
    step_id = _check_id(patch_id)
    _consume(ex, step_id)
    ex.patches.setdefault(patch_id, True)
