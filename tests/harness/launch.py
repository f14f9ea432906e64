"""The test launcher: ``python -m tests.harness.launch daemon --config FILE``.

The same daemon as ``wf daemon``, with the reliability campaign's hooks installed from the
environment of this process only (product code reads no test switch anywhere):

- ``WF_CRASH_AT=<point>:<nth>[,...]``: SIGKILL the process the ``nth`` time execution passes
  ``point`` (:data:`POINTS`), exactly where a power cut or ``kill -9`` would hurt most.
  ``WF_CRASH_AFTER=<point>``: count passages only once ``point`` has been passed (e.g.
  ``timers.armed``: a workload point, not the start-up's own writes such as the daemon's
  registration in the registry).
- ``WF_TEST_<MUTANT>=1``: a deliberate bug (:data:`MUTANTS`), so a campaign can prove that its
  checks fail when they should. ``WF_TEST_SYNCHRONOUS=<value>`` overrides ``storage.synchronous``.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import sys
from collections.abc import Mapping
from typing import Any

import storage
from orchestrator.config import Config
from orchestrator.daemon.compose import Hooks
from storage.instruments import Instrument

POINTS: frozenset[str] = frozenset(
    {
        "batch.begun",  # writer: transaction begun, nothing applied
        "batch.executed",  # writer: every op applied, COMMIT not yet run
        "batch.committed",  # writer: committed, callers not yet woken
        "reply.sent",  # server: a write's reply written to the client
        "step.returned",  # actor: a step body returned, its result not yet enqueued
        "waitpoint.committed",  # actor: waitpoint rows committed, the run not yet parked
        "timer.due",  # timers: timers due, their firing not yet committed
        "timer.fired",  # timers: firing committed, runs not yet resumed
        "event.committed",  # send_event: event committed, waiting runs not yet resumed
        "recovery.scan",  # start-up: recovery has begun restarting runs
        "timers.armed",  # start-up: overdue timers fired, daemon not yet ready
        "migration.midway",  # start-up: between two migration statements
    }
)

MUTANTS: frozenset[str] = frozenset(
    {
        "ACK_BEFORE_COMMIT",  # submit replies before the run row is committed
        "SKIP_STEP_DEDUP",  # a replay ignores recorded step results and runs steps again
        "SKIP_TIMER_ARM_ON_START",  # stored timers never fire
        "SKIP_IO_FAIL_STOP",  # the writer keeps writing after an I/O error (e.g. fsync EIO)
        "EARLY_TIMER_FIRE",  # timers fire by a wall clock an hour fast
    }
)


def parse_crash_points(spec: str) -> dict[str, int]:
    armed: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, _, nth = part.partition(":")
        if name not in POINTS:
            raise ValueError(f"WF_CRASH_AT: unknown crash point {name!r}; known: {sorted(POINTS)}")
        armed[name] = int(nth or "1")
    return armed


def _known_point(name: str) -> str:
    if name and name not in POINTS:
        raise ValueError(f"WF_CRASH_AFTER: unknown crash point {name!r}; known: {sorted(POINTS)}")
    return name


class CampaignInstrument(Instrument):
    """Crash points and the writer's fail-stop mutant."""

    def __init__(self, armed: Mapping[str, int], keep_writing_after_io_error: bool,
                 after: str = "") -> None:
        self._armed = dict(armed)
        self._seen: dict[str, int] = {}
        self._keep_writing = keep_writing_after_io_error
        self._after = after  # counting starts once this point has been passed ("": at once)

    def reached(self, point: str) -> None:
        if point == self._after:
            self._after = ""
            return
        if point not in self._armed or self._after:
            return
        count = self._seen.get(point, 0) + 1
        self._seen[point] = count
        if count == self._armed[point]:
            sys.stderr.write(f"crash point {point} reached ({count}): SIGKILL\n")
            sys.stderr.flush()
            os.kill(os.getpid(), signal.SIGKILL)

    def fail_stop(self, error: BaseException) -> bool:
        return not self._keep_writing


class MutantStorage:
    """The storage the engine gets, with the switched-on mutants' bugs; the rest delegates."""

    def __init__(self, inner: storage.Storage, mutants: frozenset[str]) -> None:
        self._inner = inner
        self._mutants = mutants

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def create_run(self, op: storage.CreateRun) -> storage.RunCreated:
        if "ACK_BEFORE_COMMIT" not in self._mutants:
            return await self._inner.create_run(op)
        # Reply with what the row would be while its commit is still on its way.
        import asyncio

        asyncio.get_running_loop().create_task(self._inner.create_run(op))
        return storage.RunCreated(_unsaved_record(op), created=True)

    async def load_journal(self, run_id: str) -> storage.Journal:
        # Only the actor's replay forgets the recorded steps; `get` (which the campaign's
        # checks read) still shows them, as with a real dedup bug in the executor.
        replaying = sys._getframe(1).f_globals.get("__name__") == "orchestrator.engine.actor"
        journal = await self._inner.load_journal(run_id)
        if "SKIP_STEP_DEDUP" in self._mutants and replaying:
            return dataclasses.replace(journal, attempts=())
        return journal

    async def next_timer_due(self) -> float | None:
        if "SKIP_TIMER_ARM_ON_START" in self._mutants:
            return None
        due = await self._inner.next_timer_due()
        if due is not None and "EARLY_TIMER_FIRE" in self._mutants:
            return due - 3600.0
        return due

    async def claim_due_timers(self, before: float, limit: int = 1000) -> list[Any]:
        if "SKIP_TIMER_ARM_ON_START" in self._mutants:
            return []
        if "EARLY_TIMER_FIRE" in self._mutants:
            before += 3600.0
        return await self._inner.claim_due_timers(before, limit)


def _unsaved_record(op: storage.CreateRun) -> storage.RunRecord:
    return storage.RunRecord(
        run_id=op.run_id, number=0, workflow_id=op.workflow_id,
        workflow_version=op.workflow_version, status=op.status, input=op.input, output=None,
        error=None, tags=tuple(op.tags), priority=op.priority,
        idempotency_key=op.idempotency_key, parent_run_id=op.parent_run_id,
        root_run_id=op.root_run_id, triggered_by=op.triggered_by, attempt=1,
        created_at=op.created_at, scheduled_at=op.scheduled_at, started_at=None,
        finished_at=None, updated_at=op.created_at, diverged=False, recoveries=0,
        compute_seconds=0.0,
    )


def hooks_from_env(env: Mapping[str, str]) -> Hooks:
    mutants = frozenset(m for m in MUTANTS if env.get(f"WF_TEST_{m}") == "1")
    instrument = CampaignInstrument(
        parse_crash_points(env.get("WF_CRASH_AT", "")), "SKIP_IO_FAIL_STOP" in mutants,
        after=_known_point(env.get("WF_CRASH_AFTER", "")),
    )
    storage_mutants = mutants - {"SKIP_IO_FAIL_STOP"}
    wrap: Any = (lambda inner: MutantStorage(inner, storage_mutants)) if storage_mutants else None
    synchronous = env.get("WF_TEST_SYNCHRONOUS")
    adjust = None
    if synchronous:
        def adjust(cfg: Config) -> Config:
            return dataclasses.replace(
                cfg, storage=dataclasses.replace(cfg.storage, synchronous=synchronous)
            )
    return Hooks(instrument=instrument, wrap_storage=wrap, adjust_config=adjust)


def main(argv: list[str]) -> int:
    from orchestrator.daemon.daemon import run_daemon

    if len(argv) != 3 or argv[0] != "daemon" or argv[1] != "--config":
        print("usage: python -m tests.harness.launch daemon --config FILE", file=sys.stderr)
        return 2
    return run_daemon(argv[2], hooks_from_env(os.environ))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
