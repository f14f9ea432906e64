"""The workflow of the fsync audit (``test_fsync_audit.py``), loaded by a real daemon as module
``fsync_workflows``.

Every value the audit must find in the WAL is a *needle*: a fixed-width string the test makes
from a run's serial (``needle(serial, tag)``), unique to one acknowledgement, so the audit can
tell in the ``strace`` log which WAL write carried which acknowledged fact. Each step body
announces itself by writing ``<needle of the step>`` to ``/dev/null``: a syscall the trace shows,
at the moment the workflow has moved past the previous step.
"""

from __future__ import annotations

import os
from typing import Any

from runtime import Context, workflow

WORKFLOW_ID = "fsync-audit"
WAIT_KINDS = ("event", "signal", "token", "none")


def needle(serial: int, tag: str) -> str:
    """``fz`` + 8 hex digits + a 2-character upper-case tag: 12 characters, never overlapping."""
    assert len(tag) == 2 and tag.isalnum() and tag == tag.upper(), tag
    return f"fz{serial:08x}{tag}"


def step_tag(i: int) -> str:
    return f"S{i}"  # the step's side effect; its result is needle(serial, f"R{i}")


def _mark(serial: int, i: int) -> str:
    fd = os.open(os.devnull, os.O_WRONLY)
    try:
        os.write(fd, needle(serial, step_tag(i)).encode())
    finally:
        os.close(fd)
    return needle(serial, f"R{i}")


@workflow(id=WORKFLOW_ID, description="Steps with visible side effects around one wait.")
async def audited(input: dict[str, Any], ctx: Context) -> dict[str, Any]:
    serial, steps, kind = input["serial"], input["steps"], input["wait"]
    for i in range(steps):
        await ctx.step(f"s{i}", _mark, serial, i)
    if kind == "event":
        await ctx.wait_for_event(needle(serial, "ET"))
    elif kind == "signal":
        await ctx.wait_for_signal("go")
    elif kind == "token":
        await (await ctx.wait_for_token(needle(serial, "TK"))).wait()
    await ctx.step(f"s{steps}", _mark, serial, steps)
    return {"out": needle(serial, "OK")}
