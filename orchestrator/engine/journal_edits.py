"""``fork`` and ``amend`` (SPEC §14): operator edits of run journals.

A fork is a new run of the same workflow and version whose journal is a copy of the original's
up to (not including) a step: its body replays the copy and goes on live from there, so the
step and everything after it run again. An amend replaces the recorded result of the step a
run stopped on (failing, in its backoff, paused or held there) in place, with an audit row.
Both commit before they answer; storage does the copy and the check atomically
(:class:`storage.ForkRun`, :class:`storage.AmendStep`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import structlog

import storage
from orchestrator.api import caller, errors, service, views
from orchestrator.api.service import JSONDict
from orchestrator.engine.flow.admission import Admission
from orchestrator.engine.flow.plan import Plan
from orchestrator.engine.supervisor import Supervisor
from runtime.clock import Clock
from runtime.context import auto_token_id
from runtime.workflow import Registry, WorkflowDefinition

log = structlog.get_logger("wf")

RunOp = Callable[..., storage.CreateRun]
"""``Engine._run_op``: the ``CreateRun`` of a new run of a definition."""
Accept = Callable[[WorkflowDefinition, Any], Any]
PlanFor = Callable[[WorkflowDefinition, Any], Plan]


class JournalEdits:
    """The engine's ``fork`` and ``amend``; the engine's handlers delegate here."""

    def __init__(
        self,
        *,
        storage_: storage.Storage,
        clock: Clock,
        registry: Registry,
        supervisor: Supervisor,
        admission: Admission,
        run_op: RunOp,
        accept: Accept,
        plan: PlanFor,
        new_run_id: Callable[[], str],
        started: Callable[[storage.RunRecord], Awaitable[None]],
    ) -> None:
        self._storage = storage_
        self._clock = clock
        self._registry = registry
        self._supervisor = supervisor
        self._admission = admission
        self._run_op = run_op
        self._accept = accept
        self._plan = plan
        self._new_run_id = new_run_id
        self._started = started

    # ------------------------------------------------------------------ fork

    async def fork(self, r: service.Fork) -> JSONDict:
        try:
            journal = await self._storage.load_journal(r.run_id)
        except storage.NotFound as exc:
            raise errors.NotFound("run", r.run_id) from exc
        source = journal.run
        definition = self._definition(source)
        before_seq = None if r.from_step is None else _cut(journal, r.from_step)
        run_input = source.input if r.input is None else self._accept(definition, r.input)
        new_id = r.run_id_new or self._new_run_id()
        op = self._run_op(
            definition, run_input, self._plan(definition, run_input), run_id=new_id,
            triggered_by="fork", tags=source.tags, priority=source.priority,
        )
        forked_from = {"run_id": source.run_id, "from_step": r.from_step, "reason": r.reason,
                       "at": op.created_at}
        try:
            run = await self._storage.execute(storage.ForkRun(
                op, source.run_id, before_seq, forked_from, _token_renames(journal, new_id)))
        except storage.InvalidOperation as exc:
            raise errors.InvalidParams("run_id_new", "a run id not taken", repr(new_id)) from exc
        log.info("run.forked", run_id=run.run_id, workflow_id=run.workflow_id,
                 forked_from=source.run_id, from_step=r.from_step)
        await self._started(run)
        return views.run(await self._storage.get_run(run.run_id) or run)

    def _definition(self, source: storage.RunRecord) -> WorkflowDefinition:
        """The code the fork runs on: the original's pinned version, else the current one."""
        definition = self._registry.get(source.workflow_id)
        if definition is None:
            raise errors.NotFound("workflow", source.workflow_id)
        if source.version_pinned and source.workflow_version is not None:
            pinned = self._registry.get_version(source.workflow_id, source.workflow_version)
            if pinned is None:
                raise errors.InvalidParams(
                    "run_id", "a run whose version is registered",
                    f"version {source.workflow_version!r} of {source.workflow_id!r}")
            definition = pinned
        return definition

    # ------------------------------------------------------------------ amend

    async def amend(self, r: service.Amend) -> JSONDict:
        run = await self._storage.get_run(r.run_id)
        if run is None:
            raise errors.NotFound("run", r.run_id)
        if self._supervisor.has_actor(r.run_id) and run.status is not storage.RunStatus.WAITING:
            # Its body is live in memory (running, or held at the step gate by a pause): an
            # amend would not reach it.
            raise errors.RunNotActive(r.run_id, str(run.status), "amend")
        try:
            amended = await self._storage.execute(storage.AmendStep(
                r.run_id, r.step_id, r.output, r.reason, self._clock.now(),
                caller.PEER_UID.get()))
        except storage.InvalidOperation as exc:
            if exc.data.get("code") == "NOT_FRONTIER":
                raise errors.NotFrontier(exc.message, exc.data) from exc
            raise errors.RunNotActive(
                r.run_id, str(exc.data.get("status", run.status)), "amend") from exc
        log.info("run.amended", run_id=r.run_id, step_id=r.step_id,
                 peer_uid=amended.amendment.peer_uid, reason=r.reason)
        # A warm body holds the old result in memory: the next move replays the amended one.
        warm = self._supervisor.take_warm(r.run_id)
        if warm is not None:
            await warm[0].close()
        if amended.woken:
            self._supervisor.deliver(r.run_id, resuming=True)
        return views.run(amended.run)


def _cut(journal: storage.Journal, step_id: str) -> int:
    """The sequence number of ``step_id``'s first recorded attempt: the fork copies what came
    before it. A step the run never reached is ``INVALID_PARAMS``."""
    seqs = [a.journal_seq for a in journal.attempts if a.step_id == step_id]
    if not seqs:
        reached = sorted({a.step_id for a in journal.attempts
                          if not a.step_id.startswith("patch:")})
        raise errors.InvalidParams(
            "from_step", "a step the run reached (" + (", ".join(reached) or "none") + ")",
            repr(step_id))
    known = [s for s in seqs if s is not None]
    if not known:
        raise errors.InvalidParams("from_step", "a run whose journal is numbered", "no numbers")
    return min(known)


def _token_renames(
    journal: storage.Journal, new_run_id: str
) -> tuple[tuple[str, str, str], ...]:
    """New ids for the copied tokens whose ids derive from the original's run id (the fork's
    body derives them from its own), as ``(wp_id, new_wp_id, new_token_id)``."""
    tokens = [wp for wp in journal.waitpoints if wp.token_id is not None]
    if not tokens:
        return ()
    old_id = journal.run.run_id
    index = {auto_token_id(old_id, n): n for n in range(len(tokens) + 64)}
    out: list[tuple[str, str, str]] = []
    for wp in tokens:
        n = index.get(wp.token_id or "")
        if n is not None:
            token = auto_token_id(new_run_id, n)
            out.append((wp.wp_id, f"token:{token}", token))
    return tuple(out)
